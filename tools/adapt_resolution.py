"""Released weights at another resolution, at toy scale: the shipped toy start (a 512² network, standing in for
depth_pro.pt at 1536²) loaded into a 1024² network, before and after a short adaptation fine-tune.

Four rows, each a real `python -m dp_train validate` or `fit` with recipes/finetune.yaml, finetune_demo.yaml and
adapt_resolution_toy.yaml (plus the run's own recipe: size, steps, data, logger), from `--init`:

  native         the start at the size it was trained at (validate)
  native, tuned  the same fine-tune at that size: what the fine-tune alone gives, the control for "adapted"
  resampled      the start loaded at `--vit-img-size` (position embeddings resampled on load), nothing trained
  adapted        the fine-tune at `--vit-img-size` (recipes/adapt_resolution_toy.yaml)

Data: tools/ablate.py's scenes and scoring (its `make_scenes`: one procedural world rendered "synth" and "real"
(camera effects, a sensor's noisy depth), training seeds 6,000,000+ / 6,100,000+, held-out 6,900,000+ in both
looks), AbsRel and delta1 of metric depth at the ground truth's own resolution. Speed: the forward pass of one
image at each network size, in this process (seconds per image, median of `--repeats`).

    python tools/adapt_resolution.py                    # the table of results/resolution_adaptation.md
    python tools/adapt_resolution.py --steps 2 --train 2 --val 2 --repeats 1     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ablate import below_one, make_scenes, run_dp_train
from dp_train.inference.predict import load_model
from dp_train.model.weights import read_weights

REPO = Path(__file__).resolve().parents[1]
RECIPES = [REPO / "recipes" / name for name in ("finetune.yaml", "finetune_demo.yaml", "adapt_resolution_toy.yaml")]
COLUMNS = ("synth_val/abs_rel", "synth_val/delta1", "real_val/abs_rel", "real_val/delta1")


@dataclass(frozen=True)
class Row:
    """One row of the table: the start at ViT input `vit` px, after `steps` of fine-tuning (0: validated as is);
    `slug` names its run folder."""

    name: str
    slug: str
    vit: int
    steps: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", type=Path, default=REPO / "weights" / "toy_start.safetensors",
                   help="weights that record their network shape (default: the shipped toy start, 512²)")
    p.add_argument("--vit-img-size", type=int, default=256,
                   help="ViT input of the other network, a multiple of 128 (default 256: 1024² input)")
    p.add_argument("--steps", type=int, default=50, help="fine-tuning steps at batch 2 (default 50)")
    p.add_argument("--train", type=int, default=48, help="training scenes per look (default 48)")
    p.add_argument("--val", type=int, default=24, help="held-out scenes per look (default 24)")
    p.add_argument("--size", type=int, default=256, help="scene side in pixels (default 256, as tools/ablate.py)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes per size (default 5)")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "adapt_resolution",
                   help="scenes (reused) and one folder of runs per invocation (default runs/adapt_resolution)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the Markdown table")
    return p.parse_args(argv)


def native_vit(args: argparse.Namespace) -> int | str:
    """The ViT input the start was trained at, or why the options cannot run (an error message)."""
    if not args.init.is_file():
        return f"--init {args.init}: no such file"
    network = read_weights(args.init)[1].get("network", {})
    if "vit_img_size" not in network:
        return f"--init {args.init}: records no vit_img_size (a .safetensors written by export / save_weights)"
    problem = below_one(args, "steps", "train", "val", "repeats")
    if problem:
        return problem
    if args.vit_img_size % 128 or args.vit_img_size == network["vit_img_size"]:
        return f"--vit-img-size must be a multiple of 128 other than the start's {network['vit_img_size']}"
    return network["vit_img_size"]


def run_recipe(run: Path, row: Row, scenes: dict[str, Path], init: Path) -> Path:
    """The last recipe of a row's run: its size, length, data, start, logger and checkpoint."""
    run.mkdir(parents=True)
    steps = max(row.steps, 1)
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": steps, "val_check_interval": steps, "default_root_dir": str(run),
                    "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(run), "name": "csv"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True,
                                                 "save_top_k": 0, "every_n_train_steps": steps}}]},
        "model": {"init_from": str(init), "network": {"vit_img_size": row.vit}},
        "data": {"seed": 0, "image_size": 4 * row.vit, "samples_per_epoch": 100000,
                 "train_sources": [{"name": "synth", "urls": str(scenes["synth_train"])},
                                   {"name": "real", "urls": str(scenes["real_train"])}],
                 "val_sources": [{"name": "synth_val", "urls": str(scenes["synth_val"])},
                                 {"name": "real_val", "urls": str(scenes["real_val"])}],
                 "guard_sources": []},
    }
    path = run / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def measure(runs: Path, row: Row, scenes: dict[str, Path], init: Path) -> dict[str, float]:
    """A row's validation metrics (and its wall time, `wall_s`): validate the start, or fine-tune it first."""
    started = time.monotonic()
    run = runs / row.slug
    recipe = run_recipe(run, row, scenes, init)
    metrics = run_dp_train(run, "fit" if row.steps else "validate", [*RECIPES, recipe])
    wall = time.monotonic() - started
    print(f"{row.name}: {row.steps} steps, {wall:.0f} s", file=sys.stderr, flush=True)
    return metrics | {"wall_s": wall}


def forward_seconds(init: Path, vit: int, repeats: int) -> float:
    """Median seconds of one forward pass (depth and FOV) of one image through the start loaded at ViT input `vit`."""
    model = load_model(init, None, vit)
    x = torch.rand(1, 3, 4 * vit, 4 * vit) * 2 - 1
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown(rows: list[Row], results: dict[str, dict[str, float]], speed: dict[int, float]) -> str:
    """The table: per row its network, steps, held-out metrics and forward time."""
    lines = ["| row | network input | fine-tune steps | synthetic AbsRel | synthetic δ1 | real-like AbsRel | "
             "real-like δ1 | forward s/image |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cells = [f"{results[row.name].get(c, float('nan')):.3f}" for c in COLUMNS]
        lines.append(f"| {row.name} | {4 * row.vit}² | {row.steps} | {' | '.join(cells)} | {speed[row.vit]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Render (or reuse) the scenes, validate / fine-tune every row, time the forward passes, print the table."""
    args = parse_args(argv)
    native = native_vit(args)
    if isinstance(native, str):
        print(f"error: {native}", file=sys.stderr)
        return 2
    started = time.monotonic()
    other = args.vit_img_size
    rows = [Row("native", "native", native, 0), Row("native, fine-tuned", "native-tuned", native, args.steps),
            Row("resampled", "resampled", other, 0), Row("resampled, adapted", "adapted", other, args.steps)]
    scenes = make_scenes(args)
    runs = args.work_dir / time.strftime("runs-%Y%m%d-%H%M%S", time.gmtime())
    try:
        results = {row.name: measure(runs, row, scenes, args.init) for row in rows}
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    speed = {vit: forward_seconds(args.init, vit, args.repeats) for vit in (native, args.vit_img_size)}
    wall = time.monotonic() - started
    if args.json:
        print(json.dumps({"rows": results, "forward_s": speed, "wall_s": round(wall, 1),
                          "options": {k: str(v) for k, v in vars(args).items()}}))
    else:
        print(f"{args.train} training scenes per look, {args.val} held-out, {args.size} px; fine-tunes of "
              f"{args.steps} steps at batch 2; {torch.get_num_threads()} threads; wall {wall / 60:.1f} min\n")
        print(markdown(rows, results, speed))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through `run_dp_train`, which kills its child
    sys.exit(main())
