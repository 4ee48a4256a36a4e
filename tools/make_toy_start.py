#!/usr/bin/env python
"""Make the toy "pretrained" start: the tiny network trained on many procedural scenes, on a CPU.

Real Depth Pro runs start from DINOv2 encoders or from Apple's `depth_pro.pt`; the toy runs of this
repository (the quick start, `tools/ablate.py`, the fine-tuning demo) start from this file instead, so that
they begin with a network that already resolves scene structure. The shipped `weights/toy_start.safetensors`
was made by two runs of this tool: stage 1 from random weights,

    python tools/make_toy_start.py

and stage 2 continuing it (`--model.init_from` after `--`; weights/README.md gives both commands and the figures).

It renders the training and validation scenes that `recipes/toy_start.yaml` names (seeds 1,000,000 and up,
validation 200,000 and up: never the quick start's), runs `python -m dp_train fit --recipe
recipes/toy_start.yaml`, and exports the last checkpoint's network in Apple's layout (a `.safetensors`, which
also records the network's shape), its FOV ViT initialised from the trained image encoder (`write_start`). A run that was stopped resumes from its `last.ckpt` when started again.

Arguments after `--` go to `dp_train fit` as recipe overrides, e.g. on a GPU (weights/README.md gives the
command that made the shipped file):

    python tools/make_toy_start.py --train-scenes 12000 --jobs 14 -- --trainer.accelerator=gpu \
        --data.batch_size=32 --data.num_workers=6
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dp_train.model.weights import read_weights, save_state_dict
from dp_train.inference.predict import load_model

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "toy_start.yaml"
TRAIN_SEED = 1_000_000
VAL_SEED = 200_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's max_steps)")
    parser.add_argument("--train-scenes", type=int, default=3000, help="training scenes to render")
    parser.add_argument("--val-scenes", type=int, default=32, help="validation scenes to render")
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels (the network input is 512)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where scenes, logs and checkpoints go (default: the recipe's, runs/toy_start)")
    parser.add_argument("--out", type=Path, default=REPO / "weights" / "toy_start.safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--scenes", type=Path, default=None,
                        help="where the scenes are rendered, or found if already there (default: RUN_DIR/scenes)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="rendering processes; each writes its own shards and index (1: one index, as before)")
    parser.add_argument("fit_overrides", nargs="*", metavar="-- FIT_OVERRIDE",
                        help="recipe overrides passed to `dp_train fit` after the tool's own")
    return parser.parse_args(argv)


def run_overrides(recipe: dict, run_dir: Path, train_indexes: list[Path], val_index: Path) -> list[str]:
    """Command-line overrides that move the recipe's run (logs, checkpoints) into `run_dir` and read the scenes
    from `train_indexes` / `val_index`."""
    data = recipe["data"]
    train = dict(data["train_sources"][0], urls=[str(index) for index in train_indexes])
    val = dict(data["val_sources"][0], urls=str(val_index))
    return [f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
            f"--trainer.callbacks.init_args.dirpath={run_dir / 'checkpoints'}",
            f"--data.train_sources={json.dumps([train])}", f"--data.val_sources={json.dumps([val])}"]


def chunks(folder: Path, prefix: str, count: int, seed: int, jobs: int) -> list[tuple[Path, int, int]]:
    """(index, scene count, first seed) of each of `jobs` consecutive seed ranges that together cover
    `seed .. seed + count - 1`; one job keeps the single index `{prefix}.index.json`."""
    if jobs == 1:
        return [(folder / f"{prefix}.index.json", count, seed)]
    bounds = [count * i // jobs for i in range(jobs + 1)]
    return [(folder / f"{prefix}-{i:02d}of{jobs:02d}.index.json", bounds[i + 1] - bounds[i], seed + bounds[i])
            for i in range(jobs)]


def render(folder: Path, prefix: str, count: int, seed: int, size: int, jobs: int = 1) -> list[Path]:
    """Render scenes `seed .. seed + count - 1` into `folder` with `jobs` processes (one seed range and index
    each), reusing an index already there that holds its range's count; returns the indexes."""
    parts = chunks(folder, prefix, count, seed, jobs)
    for index, part_count, _ in parts:  # check every reused index before starting any process
        held = json.loads(index.read_text()).get("samples") if index.is_file() else part_count
        if held != part_count:
            raise SystemExit(f"error: {index} holds {held} scenes, not {part_count}: remove it, or pass the "
                             "--train-scenes / --val-scenes / --jobs that rendered it")
    running = [subprocess.Popen([
        sys.executable, str(REPO / "tools" / "synth_scenes.py"), "--out", str(folder),
        "--prefix", index.name.removesuffix(".index.json"), "--count", str(part_count), "--seed", str(part_seed),
        "--size", str(size), "--samples-per-shard", "250", "--depth-format", "png16", "--quiet"])
        for index, part_count, part_seed in parts if not index.is_file()]
    failed = [process for process in running if process.wait() != 0]  # all finish before a failure is reported
    if failed:
        raise subprocess.CalledProcessError(failed[0].returncode, failed[0].args)
    return [index for index, _, _ in parts]


def train(run_dir: Path, overrides: list[str], steps: int | None) -> Path:
    """Run the recipe (resuming a stopped run from its last.ckpt); returns the last checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "dp_train", "fit", "--recipe", str(RECIPE), *overrides]
    if steps is not None:
        cmd.append(f"--trainer.max_steps={steps}")
    if last.is_file():
        cmd += ["--ckpt_path", str(last)]
    subprocess.run(cmd, check=True, cwd=REPO)
    return last


def write_start(exported: Path, out: Path) -> None:
    """Write the trained network to `out` with its FOV ViT initialised from the trained image encoder.

    Real runs start all three ViTs (patch, image, FOV encoder) from the same DINOv2 weights
    (`model.network.dinov2_weights`); the toy start's stand-in for those pretrained features is its trained image
    encoder, which sees the whole image as the FOV encoder does. The FOV stage then starts, as in a real run, from
    pretrained ViT features and an untrained FOV head, instead of from a random ViT (the depth stages never train
    the FOV network)."""
    _, shape = read_weights(exported)
    model = load_model(exported, preset=None)
    if model.fov is not None:  # a network without an FOV head has none to start
        model.fov.encoder[0].load_state_dict(model.encoder.image_encoder.state_dict())
    save_state_dict(model.state_dict(), out, shape=shape)
    print(f"wrote {out} (FOV ViT initialised from the image encoder)")


def validation_history(run_dir: Path) -> list[dict[str, str]]:
    """The validation rows of the run's CSV logs (all versions, in step order)."""
    rows = []
    for path in sorted(run_dir.glob("version_*/metrics.csv")):
        with path.open() as f:
            rows += [row for row in csv.DictReader(f) if row.get("val/abs_rel")]
    return sorted(rows, key=lambda row: int(row["step"]))


def main(argv: list[str] | None = None) -> int:
    """Render, train, export; print the validation history and the wall time."""
    args = parse_args(argv)
    if not 1 <= args.jobs <= args.train_scenes:
        print(f"error: --jobs must be 1..{args.train_scenes} (--train-scenes), got {args.jobs}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    start = time.monotonic()
    recipe = yaml.safe_load(RECIPE.read_text())
    run_dir = (args.run_dir or REPO / recipe["trainer"]["default_root_dir"]).resolve()
    scenes = (args.scenes or run_dir / "scenes").resolve()
    train_indexes = render(scenes / "train", "toy-train", args.train_scenes, TRAIN_SEED, args.size, args.jobs)
    [val_index] = render(scenes / "val", "toy-val", args.val_scenes, VAL_SEED, args.size)
    overrides = run_overrides(recipe, run_dir, train_indexes, val_index) + args.fit_overrides
    last = train(run_dir, overrides, args.steps)
    exported = run_dir / "exported.safetensors"
    subprocess.run([sys.executable, "-m", "dp_train", "export", "--ckpt", str(last), "--out", str(exported),
                    "--overwrite"], check=True, cwd=REPO)
    write_start(exported, args.out)
    print("step  AbsRel  delta1  boundary F1")
    for row in validation_history(run_dir):
        print(f"{row['step']:>5}  {float(row['val/abs_rel']):.3f}  {float(row['val/delta1']):.3f}  "
              f"{float(row.get('val/boundary_f1') or 'nan'):.4f}")
    print(f"wrote {args.out} in {(time.monotonic() - start) / 60:.1f} min")
    return 0


def run_main() -> int:
    """`main`, with a failed step (rendering, training, export) reported as one line after its own output."""
    try:
        return main()
    except subprocess.CalledProcessError as err:
        step = " ".join(str(part) for part in err.cmd[1:3])
        print(f"error: `{step}` failed (exit {err.returncode}); its own message is above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run_main())
