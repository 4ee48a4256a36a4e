"""The paper's ablation directions (Tab. 11-14) at toy scale, on a CPU, from the shipped toy start.

Every condition is a recipe, recipes/ablations/toy/<condition>.yaml layered on recipes/ablations/toy/base.yaml,
and every run is a real `python -m dp_train fit` of the tiny network from `--init` (weights/toy_start.safetensors):

  1A  stage 1, MAE only                         1C  stage 1 + SSI-MAGE on synthetic samples (the paper's)
  2A  1C for half the steps, then stage 2 (MAE + MSE + MAGE + MALE + MSGE) on synthetic data; = 3A
  3C  reversed: stage 2's data and objective first, then stage 1's
  FOV the FOV stage on each seed's 2A network (depth frozen)   vs   a constant FOV, the training median

Data: one procedural world (dp_train/synth/) rendered two ways: "synth" (exact) and "real" (camera effects and a
depth sensor's noisy, holed depth, flagged real: trimmed MAE, no gradient loss). Training scenes use seeds
6,000,000+ (synthetic) and 6,100,000+ (real-like); the held-out scenes are seeds 6,900,000+ in both looks, a range
used by no training set of the project. Scenes are rendered once into the work dir and reused. The held-out scenes
are scored three ways: synth_val (synthetic look), real_val (real-like look, metric) and rel_val (the real-like look
read as relative, `metric: false`: AbsRel / delta1 after per-image scale-and-shift alignment, HRWSI's stand-in).
Each condition runs once per seed (`data.seed`: data order, mixture draws, augmentation; and `seed_everything`).
Two tables: the directions (mean ± sd over seeds and the paired difference per check; tools/ablate_report.py says
when a direction counts as reproduced), and every condition's metrics in the columns of the paper's Tab. 11-13.

    python tools/ablate.py                         # the tables of results/ablations.md (about 15 min on 2 cores)
    python tools/ablate.py --steps 4 --fov-steps 2 --train 4 --val 2 --seeds 1     # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ablate_report import as_json, condition_markdown, condition_rows, conditions_json, markdown, rows
from dp_train.shards import shard_urls
from dp_train.data.health import SourceHealth
from dp_train.data.sources import raw_records
from dp_train.synth import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes" / "ablations" / "toy"
DEPTH_CONDITIONS = ("1A", "1C", "2A", "3C")
LOOKS = {"synth": "synthetic", "real": "real"}
"""Scene-set name prefix -> the look it is rendered with (dp_train.synth.LOOKS)."""
SCENE_SEEDS = {"synth_train": 6_000_000, "real_train": 6_100_000, "synth_val": 6_900_000, "real_val": 6_900_000}
"""First scene seed of each set; both held-out sets are the same scenes in the two looks."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="runs per condition, seeds 0 .. N-1 (default 3)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of every depth run (default 100)")
    p.add_argument("--fov-steps", type=int, default=50, help="steps of every FOV-stage run (default 50)")
    p.add_argument("--init", type=Path, default=REPO / "weights" / "toy_start.safetensors",
                   help="start of every depth run (default weights/toy_start.safetensors)")
    add_scene_options(p, 48, 12, "ablate", " per look")
    p.add_argument("--from-runs", type=Path, default=None, metavar="RUNS",
                   help="train nothing: the table of a runs folder's results.jsonl (e.g. of an interrupted "
                        "invocation), over the seeds whose every run finished")
    return p.parse_args(argv)


def below_one(args: argparse.Namespace, *names: str) -> str | None:
    """The error message of the first named count option below 1, or None."""
    for name in names:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    return None


def options_or_error(args: argparse.Namespace, check: Callable[[argparse.Namespace], str | None]) -> bool:
    """Whether `check` passes `args`; prints its one `error:` line when not (the tools then exit 2)."""
    problem = check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
    return not problem


def add_scene_options(p: argparse.ArgumentParser, train: int, val: int, work_dir: str, per: str = "") -> None:
    """The options a toy-scale tool shares: how many scenes of which size, where they and the runs go, the output."""
    p.add_argument("--train", type=int, default=train, help=f"training scenes{per} (default {train})")
    p.add_argument("--val", type=int, default=val, help=f"held-out scenes{per} (default {val})")
    p.add_argument("--size", type=int, default=256, help="scene side in pixels (default 256; the input is 512)")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / work_dir,
                   help=f"scenes (reused) and one folder of runs per invocation (default runs/{work_dir})")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the Markdown table")


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad option as an error message, or None."""
    problem = below_one(args, "seeds", "steps", "fov_steps", "train", "val")
    if problem:
        return problem
    if args.steps < 2:
        return "--steps must be >= 2 (2A and 3C switch stages half-way)"
    if args.size < 32:
        return f"--size must be >= 32, got {args.size}"
    if args.from_runs is not None:
        return None if (args.from_runs / "results.jsonl").is_file() else \
            f"--from-runs {args.from_runs}: no results.jsonl (a runs-* folder of tools/ablate.py)"
    if not args.init.is_file():
        return f"--init {args.init}: no such file (the shipped start, or a .safetensors / .ckpt of the tiny network)"
    return None


def make_scenes(args: argparse.Namespace, seeds: dict[str, int] = SCENE_SEEDS) -> dict[str, Path]:
    """Training and held-out scenes of both looks, rendered once into the work dir (index files): one set per
    entry of `seeds` (`<look>_train` / `<look>_val` -> first seed)."""
    root = args.work_dir / "scenes" / f"{args.size}px-{args.train}-{args.val}"
    scenes = {}
    for name, first in seeds.items():
        index = root / name / f"{name}.index.json"
        if not index.is_file():
            count = args.train if name.endswith("train") else args.val
            write_synthetic_shards(index.parent, name, count, (args.size, args.size), first, progress=False,
                                   look=LOOKS[name.split("_")[0]])
        scenes[name] = index
    return scenes


def scaled_callbacks(condition: Path, run: Path, steps: int) -> list[dict]:
    """The run's checkpoint and the condition's curriculum with every `start_step` moved to `steps`
    (its share of the recipe's `trainer.max_steps` kept)."""
    recipe_steps = load(RECIPES / "base.yaml")["trainer"]["max_steps"]
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True, "save_top_k": 0,
                                "every_n_train_steps": steps}}]
    for callback in load(condition).get("trainer", {}).get("callbacks", []):
        if callback["class_path"].endswith("CurriculumCallback"):
            for stage in callback["init_args"]["stages"]:
                stage["start_step"] = scaled_step(stage["start_step"], steps, recipe_steps)
            callbacks.append(callback)
    return callbacks


def scaled_step(start: int, steps: int, recipe_steps: int) -> int:
    """A stage start written for `recipe_steps` moved to a run of `steps`: 0 stays 0, any later start stays
    inside the run (step 1 .. steps - 1) so that every stage trains."""
    return 0 if start == 0 else min(steps - 1, max(1, round(start * steps / recipe_steps)))


def run_recipe(run: Path, condition: Path, scenes: dict[str, Path], seed: int, steps: int, init: Path) -> Path:
    """The last recipe of a run: its seed, length, data, start, logger and checkpoint."""
    run.mkdir(parents=True)
    config = {
        "seed_everything": seed,
        "trainer": {"max_steps": steps, "val_check_interval": steps, "default_root_dir": str(run),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(run), "name": "csv"}},
                    "callbacks": scaled_callbacks(condition, run, steps)},
        "model": {"init_from": str(init)},
        "data": {"seed": seed,  # shuffles, mixture draws and augmentation (seed_everything does not reach them)
                 "train_sources": [{"name": "synth", "urls": str(scenes["synth_train"])},
                                   {"name": "real", "urls": str(scenes["real_train"])}],
                 # the first is what `val/<metric>` monitors; rel_val reads the real-like held-out scenes as relative
                 # (HRWSI's stand-in): it logs `abs_rel_aligned` / `delta1_aligned`
                 "val_sources": [{"name": "synth_val", "urls": str(scenes["synth_val"])},
                                 {"name": "real_val", "urls": str(scenes["real_val"])},
                                 {"name": "rel_val", "urls": str(scenes["real_val"]), "metric": False}]},
    }
    path = run / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def dp_train(args: list[str], log: Path, name: str) -> None:
    """`python -m dp_train ARGS` of this checkout, its output in `log`; a RuntimeError naming `name`, the log and
    its last line when it fails. The child is killed when this tool is interrupted or terminated."""
    env = os.environ | {"PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "dp_train", *args]
    with open(log, "w") as out, subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out) as child:
        try:
            code = child.wait()
        except BaseException:
            child.kill()
            raise
    if code != 0:
        lines = log.read_text().strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"{name}: {args[0]} failed ({log}): {lines[-1]}")


def fit(run: Path, condition: Path, last: Path) -> dict[str, float]:
    """`python -m dp_train fit` with base, condition and run recipes (output in the run's fit.log); the final
    validation metrics."""
    return run_dp_train(run, "fit", [RECIPES / "base.yaml", condition, last])


def run_dp_train(run: Path, subcommand: str, recipes: list[Path]) -> dict[str, float]:
    """`python -m dp_train <subcommand>` (fit or validate) with `recipes` (output in the run's <subcommand>.log);
    the final validation metrics."""
    log = run / f"{subcommand}.log"
    dp_train([subcommand, *(arg for r in recipes for arg in ("--recipe", str(r)))], log, run.name)
    metrics = validation_metrics(sorted(run.glob("csv/version_*/metrics.csv"))[-1])
    if not metrics:
        raise RuntimeError(f"{run.name}: no validation metrics in its metrics.csv ({log})")
    return metrics


def validation_metrics(path: Path) -> dict[str, float]:
    """Every `val/` key of a CSVLogger metrics.csv, without the prefix, at its last logged value (the runs validate
    once, at the end; a key logged on a row of its own, as the relative source's aligned metrics may be, is kept)."""
    out: dict[str, float] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out |= {k.removeprefix("val/"): float(v) for k, v in row.items() if k and k.startswith("val/") and v}
    return out


def timed_fit(runs: Path, name: str, seed: int, steps: int, scenes: dict[str, Path], init: Path) -> dict[str, float]:
    """One run of condition `name` (recipes/ablations/toy/<name>.yaml); its time on stderr and its metrics
    appended to the runs folder's results.jsonl as it finishes (a cut-short table keeps what ran)."""
    run, condition, started = runs / f"{name}-seed{seed}", RECIPES / f"{name.lower()}.yaml", time.monotonic()
    metrics = fit(run, condition, run_recipe(run, condition, scenes, seed, steps, init))
    with open(runs / "results.jsonl", "a") as fh:
        fh.write(json.dumps({"condition": name, "seed": seed, "steps": steps, "metrics": metrics}) + "\n")
    print(f"{name} seed {seed}: {steps} steps, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return metrics


def constant_fov(scenes: dict[str, Path]) -> dict[str, float]:
    """The constant predictor's metrics: every held-out image gets the training scenes' median FOV."""
    guess = statistics.median([*scene_fovs(scenes["synth_train"]), *scene_fovs(scenes["real_train"])])
    out = {"fov_deg": guess}
    for name in ("synth_val", "real_val"):
        errors = [abs(focal(guess) - focal(fov)) / focal(fov) for fov in scene_fovs(scenes[name])]
        out[f"{name}/share_below_25"] = sum(e < 0.25 for e in errors) / len(errors)
        out[f"{name}/median_rel_error"] = statistics.median(errors)
    return out


def focal(fov_deg: float) -> float:
    """Focal length per unit image width of a horizontal FOV in degrees."""
    return 0.5 / math.tan(math.radians(fov_deg) / 2)


def scene_fovs(index: Path) -> list[float]:
    """Horizontal FOV (degrees) of every scene of a shard set."""
    health = SourceHealth(index.name, max_bad_fraction=0.0, min_records=1)
    fovs = []
    for raw in raw_records(shard_urls(index), 1, 0, health):
        meta = json.loads(raw["json"])
        fovs.append(math.degrees(2 * math.atan(0.5 * meta["width"] / meta["f_px"])))
    return fovs


def run_all(args: argparse.Namespace, scenes: dict[str, Path]) -> dict[str, list[dict[str, float]]]:
    """Every condition for every seed, then each seed's FOV stage on its 2A network; metrics per condition."""
    runs = args.work_dir / time.strftime("runs-%Y%m%d-%H%M%S", time.gmtime())
    runs.mkdir(parents=True)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in (*DEPTH_CONDITIONS, "FOV head")}
    for seed in range(args.seeds):
        for name in DEPTH_CONDITIONS:
            results[name].append(timed_fit(runs, name, seed, args.steps, scenes, args.init))
        depth = runs / f"2A-seed{seed}" / "checkpoints" / "last.ckpt"
        results["FOV head"].append(timed_fit(runs, "FOV", seed, args.fov_steps, scenes, depth))
    return results


def finished_runs(runs: Path) -> dict[str, list[dict[str, float]]]:
    """The metrics of a runs folder's results.jsonl, per condition, over the seeds whose every run finished."""
    by_seed: dict[int, dict[str, dict[str, float]]] = {}
    for line in (runs / "results.jsonl").read_text().splitlines():
        entry = json.loads(line)
        by_seed.setdefault(entry["seed"], {})[entry["condition"]] = entry["metrics"]
    complete = [by_seed[s] for s in sorted(by_seed) if len(by_seed[s]) == len(DEPTH_CONDITIONS) + 1]
    results = {name: [seed[name] for seed in complete] for name in DEPTH_CONDITIONS}
    results["FOV head"] = [seed["FOV"] for seed in complete]
    return results


def load(path: Path) -> dict:
    """A YAML file as a dict."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def main(argv: list[str] | None = None) -> int:
    """Render (or reuse) the scenes, run every condition and seed, print the table; returns the exit code."""
    args = parse_args(argv)
    if not options_or_error(args, check_args):
        return 2
    started = time.monotonic()
    scenes = make_scenes(args)
    try:
        results = finished_runs(args.from_runs) if args.from_runs else run_all(args, scenes)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results["constant FOV"] = [constant_fov(scenes)]
    table, layout, wall = rows(results), condition_rows(results), time.monotonic() - started
    timing = f"runs of {args.from_runs}" if args.from_runs else f"wall {wall / 60:.1f} min"
    if args.json:
        print(json.dumps({"checks": as_json(table), "conditions": conditions_json(layout), "runs": results,
                          "wall_s": round(wall, 1),
                          "options": {k: str(v) for k, v in vars(args).items()}}))
    else:
        print(f"{len(results['FOV head'])} seeds; depth runs {args.steps} steps, FOV runs {args.fov_steps} steps; "
              f"{args.train} training scenes per look, {args.val} held-out; constant FOV "
              f"{results['constant FOV'][0]['fov_deg']:.1f} deg (training median); {timing}\n")
        print(markdown(table))
        print()
        print(condition_markdown(layout))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through `fit`, which kills its child
    sys.exit(main())
