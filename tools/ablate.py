"""Toy-scale learning checks of the paper's claims, on procedurally generated scenes, on a CPU.

(a) Stage 1 only vs. stage 1 -> stage 2 at equal total steps: the derivative losses of stage 2
    (MAGE, MALE, MSGE) should raise the boundary F1 without costing AbsRel.
(b) The FOV stage on scenes with random FOV (30-100 degrees): the share of validation images whose
    focal length is within 25 % of the truth, against a constant-FOV baseline that predicts the
    training set's median FOV for every image.

Every run is a real `python -m dp_train fit` of the tiny network (recipes/quickstart.yaml's
settings, CSV logs); validation scenes have no sky, so every one has dense depth for boundary F1.
Prints a Markdown table (or one JSON line with --json).

    python tools/ablate.py                                  # the README's table (about 15 min on 2 cores)
    python tools/ablate.py --steps 40 --fov-steps 20 --train 16 --val 4    # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from dp_train.data.schema import SampleMeta, decode_sample, shard_urls
from dp_train.data.stream import SourceHealth, raw_records
from dp_train.data.synth import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the learning checks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="total depth-training steps of each run in (a)")
    parser.add_argument("--switch", type=float, default=0.5, help="share of (a)'s steps spent in stage 1")
    parser.add_argument("--fov-steps", type=int, default=300, help="FOV-stage steps in (b)")
    parser.add_argument("--train", type=int, default=96, help="synthetic training scenes")
    parser.add_argument("--val", type=int, default=16, help="synthetic validation scenes (no sky)")
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "dp_train_ablate")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    return parser.parse_args(argv)


def make_scenes(args: argparse.Namespace) -> dict[str, Path]:
    """Train scenes (sky as rendered) and sky-free validation scenes, written once into the work dir."""
    root, size = args.work_dir / f"scenes{args.size}_{args.train}_{args.val}", (args.size, args.size)
    train, val = root / "train" / "train.index.json", root / "val" / "val.index.json"
    if not train.is_file():
        write_synthetic_shards(train.parent, "train", args.train, size=size, seed=10_000, progress=False)
    if not val.is_file():
        write_synthetic_shards(val.parent, "val", args.val, size=size, seed=20_000, sky_prob=0.0, progress=False)
    return {"train": train, "val": val}


def stages(args: argparse.Namespace, with_stage2: bool) -> list[dict]:
    """Curriculum of an (a) run: stage 1 throughout, or stage 2 after `switch` of the steps."""
    first = {"name": "stage1", "start_step": 0, "loss": {"mae": 1.0}}
    if not with_stage2:
        return [first]
    switch = max(1, round(args.steps * args.switch))
    return [first, {"name": "stage2", "start_step": switch, "loss": {"mae": 1.0, "mage": 1.0, "male": 1.0,
                                                                       "msge": 1.0}}]


def recipe(run: Path, scenes: dict[str, Path], steps: int, callbacks: list[dict], model: dict) -> Path:
    """Quick-start settings on the ablation's scenes, validating once at the end, logging to CSV."""
    run.mkdir(parents=True, exist_ok=True)
    config = {
        "report_validation": False,
        "trainer": {"max_steps": steps, "val_check_interval": steps, "log_every_n_steps": 10,
                    "enable_progress_bar": False, "default_root_dir": str(run),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
                    "callbacks": callbacks + [
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                         "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0,
                                       "every_n_train_steps": steps}}]},
        "model": {"log_images_every_n_val_steps": 0} | model,
        "data": {"train_sources": [{"name": "synth", "urls": str(scenes["train"])}],
                 "val_sources": [{"name": "synth_val", "urls": str(scenes["val"])}],
                 "samples_per_epoch": 10_000},
    }
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(run: Path, recipe_path: Path) -> dict[str, float]:
    """Run `fit` (quick-start recipe + `recipe_path`); the final validation metrics."""
    env = os.environ | {"PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "dp_train", "fit", "--recipe", str(QUICKSTART), "--recipe", str(recipe_path)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{run.name}: fit failed: {done.stderr.strip().splitlines()[-1:]}")
    with open(sorted(run.glob("version_*/metrics.csv"))[-1]) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val/abs_rel")]
    return {k.removeprefix("val/"): float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def depth_runs(args: argparse.Namespace, scenes: dict[str, Path]) -> dict[str, dict[str, float]]:
    """(a): the same seed, steps and data; stage 1 only vs. stage 1 -> stage 2."""
    results = {}
    for label, with_stage2 in (("stage 1 only", False), ("stage 1 -> stage 2", True)):
        run = args.work_dir / ("curriculum" if with_stage2 else "stage1_only")
        callbacks = [{"class_path": "dp_train.curriculum.CurriculumCallback",
                      "init_args": {"stages": stages(args, with_stage2)}}]
        results[label] = fit(run, recipe(run, scenes, args.steps, callbacks, {}))
    return results


def fov_run(args: argparse.Namespace, scenes: dict[str, Path]) -> dict[str, float]:
    """(b): the FOV stage on top of (a)'s curriculum run (depth network frozen)."""
    depth = args.work_dir / "curriculum" / "ckpt" / "last.ckpt"
    run = args.work_dir / "fov_stage"
    model = {"mode": "fov", "init_from": str(depth), "lr_encoder": 1e-3, "lr_decoder": 1e-3, "boundary_metrics": False}
    return fit(run, recipe(run, scenes, args.fov_steps, [], model))


def constant_fov_share(scenes: dict[str, Path]) -> tuple[float, float]:
    """(median training FOV in degrees, share of val images within 25 % focal error when it is predicted)."""
    train, val = (list(scene_fovs(scenes[split])) for split in ("train", "val"))
    guess = statistics.median(train)
    errors = [abs(1 / math.tan(math.radians(guess) / 2) - 1 / math.tan(math.radians(fov) / 2))
              / (1 / math.tan(math.radians(fov) / 2)) for fov in val]
    return guess, sum(e < 0.25 for e in errors) / len(errors)


def scene_fovs(index: Path):
    """Horizontal FOV (degrees) of every scene of a shard set."""
    health = SourceHealth(index.name, max_bad_fraction=0.0, min_records=1)
    for raw in raw_records(shard_urls(index), 1, 0, health):
        meta: SampleMeta = decode_sample(raw).meta
        yield math.degrees(2 * math.atan(0.5 * json.loads(raw["json"])["width"] / meta.f_px))


def print_table(depth: dict[str, dict[str, float]], fov: dict[str, float], constant: tuple[float, float],
                args: argparse.Namespace) -> None:
    """The two checks as Markdown tables."""
    print(f"(a) {args.steps} steps each, stage 2 from step {round(args.steps * args.switch)}, "
          f"{args.train} train / {args.val} val scenes\n")
    print("| run | AbsRel | delta1 | boundary F1 |\n|---|---:|---:|---:|")
    for label, m in depth.items():
        print(f"| {label} | {m['abs_rel']:.3f} | {m['delta1']:.3f} | {m.get('boundary_f1', float('nan')):.4f} |")
    print(f"\n(b) FOV stage, {args.fov_steps} steps, depth network frozen\n")
    print("| predictor | share within 25 % focal error | median relative focal error |\n|---|---:|---:|")
    print(f"| FOV head | {fov['share_below_25']:.3f} | {fov['median_rel_error']:.3f} |")
    print(f"| constant FOV ({constant[0]:.1f} deg, training median) | {constant[1]:.3f} | |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    scenes = make_scenes(args)
    depth = depth_runs(args, scenes)
    fov = fov_run(args, scenes)
    constant = constant_fov_share(scenes)
    if args.json:
        print(json.dumps({"depth": depth, "fov": fov, "constant_fov_deg": constant[0],
                          "constant_share_below_25": constant[1], "args": {k: str(v) for k, v in vars(args).items()}}))
    else:
        print_table(depth, fov, constant, args)


if __name__ == "__main__":
    main()
