"""Distillation at toy scale, on a CPU: a small student trained on the shipped toy start's outputs, against the same
student trained on ground truth and against the teacher itself (ours: the paper has no distillation).

Every run is a real `python -m dp_train fit --recipe recipes/distill_toy.yaml` (the student: 2 ViT blocks of width
32, half the decoder width, no FOV head, random init; the teacher: `--teacher`, by default weights/toy_start.safetensors):

  distilled      the student on the training scenes as images only (make_shards --images DIR --image-only: no
                 depth, no focal length), the teacher's canonical inverse depth its only target (`model.teacher`)
  ground truth   the same student, steps, scenes, data order and seed, on the scenes' exact depth (no teacher)

Scenes come from the procedural world (dp_train/synth/), rendered once into the work dir and reused: training seeds
7,000,000+, held-out seeds 7,900,000+, ranges no other training set of the project uses. The teacher and both
students are scored by `python -m dp_train test` on the held-out scenes (metric depth with the true focal length,
at the ground truth's resolution; per-image rows from the evaluation report). The table gives mean AbsRel and delta1
over the held-out images, parameters and CPU time per image (batch 1, the fastest of interleaved repeats on
this machine: a ratio, not a benchmark), and the paired per-image differences with a 95 % bootstrap interval over the
held-out images (it covers which scenes were held out, not the training seed).

    python tools/distill_toy.py                               # the table of results/distillation.md
    python tools/distill_toy.py --steps 2 --train 4 --val 2   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import ablate
from ablate import REPO, dp_train
from dp_train.convert.make_shards import main as make_shards
from dp_train.data.health import SourceHealth
from dp_train.data.sources import raw_records
from dp_train.model import build_depth_pro
from dp_train.model.weights import config_for, read_weights
from dp_train.shards import shard_urls

RECIPE = REPO / "recipes" / "distill_toy.yaml"
SCENE_SEEDS = {"synth_train": 7_000_000, "synth_val": 7_900_000}
"""First scene seed of the training and the held-out scenes (the synthetic look)."""
STUDENTS = {"distilled": "images", "ground truth": "synth_train"}
"""Student run -> the scene set it trains on (image-only, or with depth); the distilled one has the teacher."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of each student (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of both students (data order, init, augmentation)")
    p.add_argument("--teacher", type=Path, default=REPO / "weights" / "toy_start.safetensors",
                   help="the teacher's weights (default weights/toy_start.safetensors)")
    p.add_argument("--teacher-far", type=float, default=None,
                   help="model.teacher_far of the distilled student (default: the recipe's)")
    ablate.add_scene_options(p, 200, 32, "distill_toy")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad option as an error message, or None."""
    problem = ablate.below_one(args, "steps", "train", "val")
    if problem:
        return problem
    if args.size < 32:
        return f"--size must be >= 32, got {args.size}"
    if args.teacher_far is not None and not args.teacher_far > 0:
        return f"--teacher-far must be > 0 (a canonical depth in metres), got {args.teacher_far}"
    if not args.teacher.is_file():
        return f"--teacher {args.teacher}: no such file"
    return None


def make_scenes(args: argparse.Namespace) -> dict[str, Path]:
    """Training and held-out scenes (index files), rendered once into the work dir, and the training scenes once
    more as an image-only set, written by `make_shards --image-only` from their image files."""
    root = args.work_dir / "scenes" / f"{args.size}px-{args.train}-{args.val}"
    scenes = ablate.make_scenes(args, SCENE_SEEDS)
    scenes["images"] = root / "images" / "images.index.json"
    if not scenes["images"].is_file():
        folder = image_files(scenes["synth_train"], root / "image_files")
        with open(root / "make_shards.log", "w") as log, contextlib.redirect_stdout(log):
            code = make_shards(["--images", str(folder), "--image-only", "--dataset", "images",
                                "--out", str(scenes["images"].parent), "--workers", "1"])
        if code:
            raise RuntimeError(f"make_shards --image-only failed on {folder} (exit {code})")
    return scenes


def image_files(index: Path, folder: Path) -> Path:
    """The images of a shard set as files in `folder` (the stored bytes, no re-encoding), as a user's photos."""
    folder.mkdir(parents=True, exist_ok=True)
    health = SourceHealth(index.name, max_bad_fraction=0.0, min_records=1)
    for record in raw_records(shard_urls(index), 1, 0, health):
        kind = "jpg" if "jpg" in record else "png"
        (folder / f"{record['__key__']}.{kind}").write_bytes(record[kind])
    return folder


def model_keys(teacher: Path | None, far: float | None) -> dict:
    """A student run's `model` keys: none of a teacher for the ground-truth student; the distilled one's teacher
    and, when given, its `teacher_far` (otherwise the recipe's)."""
    if teacher is None:
        return {"teacher": None}
    return {"teacher": str(teacher)} | ({} if far is None else {"teacher_far": far})


def student_recipe(run: Path, args: argparse.Namespace, source: Path, teacher: Path | None) -> Path:
    """The last recipe of a student run: its seed, length, data, teacher, logger and checkpoint."""
    run.mkdir(parents=True)
    config = {
        "seed_everything": args.seed,
        "trainer": {"max_steps": args.steps, "default_root_dir": str(run),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(run), "name": "csv"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True,
                                                 "save_top_k": 0}}]},
        "model": model_keys(teacher, args.teacher_far),
        "data": {"seed": args.seed, "train_sources": [{"name": source.parent.name, "urls": str(source)}]},
    }
    path = run / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def evaluate(run: Path, weights: list[str], held_out: Path) -> dict[str, dict[str, float]]:
    """`python -m dp_train test` of `weights` (`--ckpt_path FILE` or `--weights FILE`) on the held-out scenes;
    per-image AbsRel and delta1 by image key, from the evaluation report's per_image.csv."""
    report = run / "report"
    config = {"trainer": {"logger": False, "default_root_dir": str(run), "callbacks": [
        {"class_path": "dp_train.evaluation.report.EvaluationReport",
         "init_args": {"out_dir": str(report), "worst_cases": 0}}]},
        "data": {"train_sources": [], "test_sources": [{"name": "held_out", "urls": str(held_out)}],
                 "val_batch_size": 2}}
    recipe = run / "test.yaml"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    dp_train(["test", "--recipe", str(RECIPE), "--recipe", str(recipe), *weights], run / "test.log", run.name)
    with open(report / "per_image.csv", newline="") as fh:
        return {row["key"]: {"abs_rel": float(row["abs_rel"]), "delta1": float(row["delta1"])}
                for row in csv.DictReader(fh)}


def cpu_ms_per_image(paths: list[Path], repeats: int = 7) -> list[float]:
    """Forward time of each weights file's network at batch 1 on its own input size (ms, the fastest of `repeats`
    rounds that run every network once: the round least slowed by other processes)."""
    nets = []
    for path in paths:
        state, shape = read_weights(path)
        net = build_depth_pro(config_for(state, shape)).eval()
        net.load_state_dict(state)
        nets.append((net, torch.zeros(1, 3, net.img_size, net.img_size)))
    times: list[list[float]] = [[] for _ in nets]
    with torch.no_grad():
        for round_ in range(repeats + 1):
            for index, (net, image) in enumerate(nets):
                started = time.perf_counter()
                net(image)
                if round_:  # the first round warms up
                    times[index].append(1000 * (time.perf_counter() - started))
    return [min(t) for t in times]


def parameters(path: Path) -> int:
    """Parameters of the network a weights file holds."""
    return sum(t.numel() for t in read_weights(path)[0].values())


def paired(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], metric: str,
           resamples: int = 2000) -> tuple[float, float, float]:
    """Mean over the images both scored of a - b in `metric`, with a 95 % bootstrap interval over the images."""
    keys = sorted(a.keys() & b.keys())
    diffs = np.array([a[k][metric] - b[k][metric] for k in keys])
    draws = np.random.default_rng(0).integers(0, len(diffs), (resamples, len(diffs)))
    means = diffs[draws].mean(axis=1)
    return float(diffs.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run_all(args: argparse.Namespace, scenes: dict[str, Path]) -> dict[str, dict]:
    """Train both students, then score them and the teacher; per row its images, weights file and wall time."""
    runs = args.work_dir / time.strftime("runs-%Y%m%d-%H%M%S", time.gmtime())
    rows: dict[str, dict] = {}
    for name, scene_set in STUDENTS.items():
        run, started = runs / name.replace(" ", "_"), time.monotonic()
        teacher = args.teacher.resolve() if name == "distilled" else None
        recipe = student_recipe(run, args, scenes[scene_set], teacher)
        dp_train(["fit", "--recipe", str(RECIPE), "--recipe", str(recipe)], run / "fit.log", run.name)
        fit_s = time.monotonic() - started
        print(f"student, {name}: {args.steps} steps, {fit_s:.0f} s", file=sys.stderr, flush=True)
        exported = run / "student.safetensors"
        dp_train(["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(exported)],
                 run / "export.log", run.name)
        images = evaluate(run, ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")], scenes["synth_val"])
        rows[f"student, {name}"] = {"images": images, "weights": exported, "fit_s": fit_s}
    teacher_run = runs / "teacher"
    teacher_run.mkdir()
    rows["teacher"] = {"images": evaluate(teacher_run, ["--weights", str(args.teacher)], scenes["synth_val"]),
                       "weights": args.teacher, "fit_s": None}
    return {name: rows[name] for name in ("teacher", *(f"student, {s}" for s in STUDENTS))}


def summary(rows: dict[str, dict]) -> dict[str, dict]:
    """Per row: mean AbsRel and delta1, parameters, ms per image, training wall time; and the paired differences."""
    speed = cpu_ms_per_image([row["weights"] for row in rows.values()])
    table = {name: {"abs_rel": statistics.mean(v["abs_rel"] for v in row["images"].values()),
                    "delta1": statistics.mean(v["delta1"] for v in row["images"].values()),
                    "images": len(row["images"]), "parameters": parameters(row["weights"]), "ms_per_image": ms,
                    "fit_s": row["fit_s"]}
             for (name, row), ms in zip(rows.items(), speed)}
    pairs = {}
    for a, b in (("student, distilled", "student, ground truth"), ("student, distilled", "teacher")):
        pairs[f"{a} - {b}"] = {m: paired(rows[a]["images"], rows[b]["images"], m) for m in ("abs_rel", "delta1")}
    return {"rows": table, "differences": pairs}


def markdown(result: dict[str, dict]) -> str:
    """The two tables of results/distillation.md."""
    teacher = result["rows"]["teacher"]
    lines = ["| network | AbsRel | delta1 | parameters | CPU ms / image | x teacher's time | training |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["rows"].items():
        fit = "(shipped)" if row["fit_s"] is None else f"{row['fit_s'] / 60:.1f} min"
        lines.append(f"| {name} | {row['abs_rel']:.3f} | {row['delta1']:.3f} | {row['parameters']:,} | "
                     f"{row['ms_per_image']:.0f} | {row['ms_per_image'] / teacher['ms_per_image']:.2f} | {fit} |")
    lines += ["", "| difference (paired per held-out image) | AbsRel, 95 % interval | delta1, 95 % interval |",
              "|---|---|---|"]
    for name, metrics in result["differences"].items():
        cells = [f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in metrics.values()]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Render (or reuse) the scenes, train and score, print the tables; returns the exit code."""
    args = parse_args(argv)
    if not ablate.options_or_error(args, check_args):
        return 2
    started = time.monotonic()
    try:
        result = summary(run_all(args, make_scenes(args)))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    wall = time.monotonic() - started
    if args.json:
        print(json.dumps(result | {"wall_s": round(wall, 1), "options": {k: str(v) for k, v in vars(args).items()}}))
    else:
        print(f"{args.steps} steps per student at batch 2; {args.train} training scenes, "
              f"{result['rows']['teacher']['images']} held-out; wall {wall / 60:.1f} min\n")
        print(markdown(result))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through `dp_train`, which kills its child
    sys.exit(main())
