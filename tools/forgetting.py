"""Fine-tuning that does not forget, at toy scale: what each way of fine-tuning gains in-domain, loses on the guard
set, and does to the window seams.

The shipped toy start (weights/toy_start.safetensors) was trained on the procedural world's synthetic look only.
Every run here fine-tunes it on the *real-like* look (camera effects, a depth sensor's noisy and holed depth:
dp_train/synth/sensor.py), a shifted domain, with the project's own fine-tuning recipes
(recipes/finetune.yaml + recipes/finetune_demo.yaml; this tool writes a last recipe per run with the data, seed,
length and checkpoint folder). The synthetic look of held-out scenes is the guard set: what the start could do and
fine-tuning must keep. Rows:

  start              the toy start itself
  full               every weight trains (finetune.yaml as shipped); its last checkpoint
  frozen encoders    `model.freeze: [patch_encoder, image_encoder]`: decoder and heads train
  LoRA               `model.lora` on both encoders (rank 4, alpha 8, factors at LR 1e-3), decoder and heads train
  guarded            the full run's `guarded-best.ckpt` (GuardedSelection: best in-domain validation with the guard
                     within 2 % of the start); the start when no validation was within
  interpolated       the full run's last weights mixed with the start, `export --interpolate-from`, at the a of
                     {0.25, 0.5, 0.75, 1} with the best in-domain gain whose guard stays within 2 % (as
                     tools/interpolation_sweep.py chooses; a = 0, the start, when none is)

Selection (the guarded checkpoint, the interpolation's a) reads the validation scenes (real_val, synth_val); the
table scores every row on other held-out scenes (real_test, synth_test) that no choice saw. Every row is an exported
file scored by `python -m dp_train validate --weights`: AbsRel in-domain and on the guard, their change against the
start, and the seam ratio (dp_train/evaluation/seams.py) of both. Mean and sample sd over `--seeds` seeds.

    python tools/forgetting.py                     # the table of results/forgetting.md
    python tools/forgetting.py --steps 4 --train 4 --val 2 --seeds 1     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

import ablate
from ablate import REPO, dp_train, validation_metrics
from dp_train.evaluation.guard import relative_worsening
from interpolation_sweep import chosen, sweep_rows

SCENE_SEEDS = {"real_train": 6_300_000, "real_val": 6_950_000, "synth_val": 6_950_000, "real_test": 6_970_000,
               "synth_test": 6_970_000}
"""First scene seed of each set: training scenes in the real-like look only; validation and test scenes in both
looks (the same scenes), ranges no other tool of the project renders."""
RECIPES = [REPO / "recipes" / "finetune.yaml", REPO / "recipes" / "finetune_demo.yaml"]
CONDITIONS: dict[str, dict] = {
    "full": {},
    "frozen encoders": {"freeze": ["patch_encoder", "image_encoder"]},
    "LoRA": {"lora": {"rank": 4, "alpha": 8.0, "encoders": ["patch_encoder", "image_encoder"], "lr": 1.0e-3}},
}
"""Fine-tuning runs per seed -> their `model` keys. The LoRA rate is ours: the factors start at zero and the
demo's full-weight rate (1e-4) barely moves them in a few hundred steps."""
ALPHAS = (0.25, 0.5, 0.75, 1.0)
TOLERANCE = 0.02
"""The guard's tolerance, as finetune.yaml's GuardedSelection: relative AbsRel worsening a guard set may show."""
ROWS = ("start", "full", "frozen encoders", "LoRA", "guarded", "interpolated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="runs per condition, seeds 0 .. N-1 (default 3)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of every run (default 200)")
    p.add_argument("--init", type=Path, default=REPO / "weights" / "toy_start.safetensors",
                   help="the start (default weights/toy_start.safetensors)")
    ablate.add_scene_options(p, 48, 16, "forgetting", " (validation and test sets each)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad option as an error message, or None."""
    problem = ablate.below_one(args, "seeds", "train", "val")
    if problem:
        return problem
    if args.steps < 4:
        return f"--steps must be >= 4 (the runs validate 4 times), got {args.steps}"
    if not args.init.is_file():
        return f"--init {args.init}: no such file (the shipped start, or a .safetensors of the tiny network)"
    return None


def sources(scenes: dict[str, Path], *names: str) -> list[dict[str, str]]:
    """Source entries of the named scene sets."""
    return [{"name": name, "urls": str(scenes[name])} for name in names]


def fit_recipe(run: Path, condition: str, seed: int, steps: int, init: Path, scenes: dict[str, Path]) -> Path:
    """The last recipe of a run: its seed, length, start, data, logger and checkpoint folder, the condition's
    `model` keys; the callbacks of finetune_demo.yaml with this run's folder (and SeamWatch, as finetune.yaml)."""
    run.mkdir(parents=True)
    checkpoints = str(run / "checkpoints")
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": checkpoints, "save_last": True, "save_top_k": 0, "every_n_train_steps": steps}},
        {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.99}},
        {"class_path": "dp_train.evaluation.seam_watch.SeamWatch", "init_args": {"factor": 1.25}},
        {"class_path": "dp_train.evaluation.guard.GuardedSelection",
         "init_args": {"metric": "abs_rel", "tolerance": TOLERANCE, "dirpath": checkpoints}},
    ]
    config = {
        "seed_everything": seed,
        "trainer": {"max_steps": steps, "val_check_interval": steps // 4, "default_root_dir": str(run),
                    "enable_progress_bar": False, "callbacks": callbacks, "logger": csv_logger(run)},
        "model": {"init_from": str(init), **CONDITIONS[condition]},
        "data": {"seed": seed, "train_sources": sources(scenes, "real_train"),
                 "val_sources": sources(scenes, "real_val"), "guard_sources": sources(scenes, "synth_val")},
    }
    return write_recipe(run / "fit.yaml", config)


def score_recipe(folder: Path, scenes: dict[str, Path]) -> Path:
    """The recipe that scores a file on every held-out set: in-domain (real look) and guard (synthetic look),
    validation and test scenes, no callbacks (the training set only as the job names one: `validate` checks it)."""
    config = {"trainer": {"callbacks": [], "enable_progress_bar": False, "logger": csv_logger(folder)},
              "data": {"train_sources": sources(scenes, "real_train"),
                       "val_sources": sources(scenes, "real_val", "real_test"),
                       "guard_sources": sources(scenes, "synth_val", "synth_test")}}
    return write_recipe(folder / "score.yaml", config)


def csv_logger(folder: Path) -> dict:
    """A CSVLogger writing under `folder`/csv."""
    return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder), "name": "csv"}}


def write_recipe(path: Path, config: dict) -> Path:
    """`config` as YAML at `path`."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def recipe_args(recipes: list[Path]) -> list[str]:
    """`--recipe R` for every recipe."""
    return [arg for recipe in recipes for arg in ("--recipe", str(recipe))]


def score(folder: Path, weights: Path, scenes: dict[str, Path]) -> dict[str, float]:
    """`validate --weights` of a file on every held-out set (output in `folder`); its `val/` metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    command = ["validate", *recipe_args([*RECIPES, score_recipe(folder, scenes)]), "--weights", str(weights)]
    dp_train(command, folder / "validate.log", folder.name)
    return validation_metrics(sorted(folder.glob("csv/version_*/metrics.csv"))[-1])


def export(ckpt: Path, out: Path, start: Path | None = None, alpha: float = 1.0) -> Path:
    """`export` of a checkpoint (mixed with `start` at `alpha` when given) to `out`."""
    mix = ["--interpolate-from", str(start), "--alpha", str(alpha)] if start else []
    dp_train(["export", "--ckpt", str(ckpt), "--out", str(out), *mix], out.with_suffix(".log"), out.stem)
    return out


def run_seed(runs: Path, seed: int, args: argparse.Namespace, scenes: dict[str, Path],
             start: dict[str, float]) -> dict[str, dict]:
    """One seed: the three fits, then every row's file scored; {row: {"metrics", and what was chosen}}."""
    out: dict[str, dict] = {}
    for condition in CONDITIONS:
        run, began = runs / f"{condition.replace(' ', '_')}-seed{seed}", time.monotonic()
        dp_train(["fit", *recipe_args([*RECIPES, fit_recipe(run, condition, seed, args.steps, args.init, scenes)])],
                 run / "fit.log", run.name)
        fit_s = time.monotonic() - began
        weights = export(run / "checkpoints" / "last.ckpt", run / "last.safetensors")
        out[condition] = {"metrics": score(run / "score", weights, scenes), "fit_s": round(fit_s, 1)}
        print(f"{condition} seed {seed}: {args.steps} steps, fit {fit_s:.0f} s", file=sys.stderr, flush=True)
    full = runs / f"full-seed{seed}"
    guarded = full / "checkpoints" / "guarded-best.ckpt"
    if guarded.is_file():
        step = torch.load(guarded, map_location="cpu", weights_only=False)["global_step"]
        weights = export(guarded, full / "guarded.safetensors")
        out["guarded"] = {"metrics": score(full / "score_guarded", weights, scenes), "step": step}
    else:
        out["guarded"] = {"metrics": start, "step": 0}
    out["interpolated"] = interpolated(full, args.init, scenes, start, out["full"]["metrics"])
    return out


def interpolated(full: Path, init: Path, scenes: dict[str, Path], start: dict[str, float],
                 last: dict[str, float]) -> dict:
    """The full run's last weights mixed with the start at each a, the a chosen on the validation scenes; the
    chosen mix's metrics and a."""
    scored = {0.0: start, 1.0: last}
    for alpha in ALPHAS[:-1]:
        mix = export(full / "checkpoints" / "last.ckpt", full / f"alpha_{alpha:g}.safetensors", init, alpha)
        scored[alpha] = score(full / f"score_alpha_{alpha:g}", mix, scenes)
    by_source = {a: {s: m[f"{s}/abs_rel"] for s in ("real_val", "synth_val")} for a, m in scored.items()}
    pick = chosen(sweep_rows(by_source, ["real_val"], ["synth_val"], "abs_rel", TOLERANCE))["alpha"]
    return {"metrics": scored[pick], "alpha": pick}


COLUMNS = (("in-domain AbsRel", "real_test/abs_rel"), ("guard AbsRel", "synth_test/abs_rel"),
           ("in-domain seam ratio", "real_test/seam_ratio"), ("guard seam ratio", "synth_test/seam_ratio"))
"""Table columns -> the metric each reads (the test scenes)."""


def spread(values: list[float], digits: int = 3, sign: str = "") -> str:
    """Mean ± sample sd (the mean alone for one value); `sign` "+" writes the mean's sign always."""
    mean = statistics.fmean(values)
    return f"{mean:{sign}.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def table_rows(start: dict[str, float], seeds: list[dict[str, dict]]) -> list[dict]:
    """Per row: every column's values over seeds, the in-domain gain and guard change against the start (relative,
    as GuardedSelection logs them), and what was chosen (guarded step, interpolation a)."""
    rows = []
    for name in ROWS:
        entries = [{"metrics": start}] * len(seeds) if name == "start" else [seed[name] for seed in seeds]
        values = {key: [e["metrics"][key] for e in entries] for _, key in COLUMNS}
        rows.append({
            "row": name, "values": values,
            "gain": [-relative_worsening(start["real_test/abs_rel"], v, "min") for v in values["real_test/abs_rel"]],
            "guard_change": [relative_worsening(start["synth_test/abs_rel"], v, "min")
                             for v in values["synth_test/abs_rel"]],
            "chosen": [e.get("alpha", e.get("step")) for e in entries]})
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: a line per row, mean ± sd over seeds."""
    head = ["row", COLUMNS[0][0], "in-domain gain", COLUMNS[1][0], "guard change (+: worse)", COLUMNS[2][0],
            COLUMNS[3][0], "chosen"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        v = r["values"]
        chosen_cells = ", ".join(f"{c:g}" for c in r["chosen"] if c is not None)
        cells = [r["row"], spread(v["real_test/abs_rel"]), spread([100 * g for g in r["gain"]], 1, "+") + " %",
                 spread(v["synth_test/abs_rel"]), spread([100 * c for c in r["guard_change"]], 1, "+") + " %",
                 spread(v["real_test/seam_ratio"]), spread(v["synth_test/seam_ratio"]), chosen_cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Render (or reuse) the scenes, score the start, run every seed, print the table; returns the exit code."""
    args = parse_args(argv)
    if not ablate.options_or_error(args, check_args):
        return 2
    began = time.monotonic()
    scenes = ablate.make_scenes(args, SCENE_SEEDS)
    runs = args.work_dir / time.strftime("runs-%Y%m%d-%H%M%S", time.gmtime())
    try:
        start = score(runs / "start", args.init, scenes)
        seeds = []
        for seed in range(args.seeds):
            seeds.append(run_seed(runs, seed, args, scenes, start))
            (runs / "results.json").write_text(json.dumps({"start": start, "seeds": seeds}, indent=1))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rows, wall = table_rows(start, seeds), time.monotonic() - began
    if args.json:
        print(json.dumps({"rows": rows, "wall_s": round(wall, 1), "runs": str(runs)}))
    else:
        print(f"{args.seeds} seeds; {args.steps} steps per run; {args.train} training scenes, {args.val} validation "
              f"and {args.val} test scenes per look; wall {wall / 60:.1f} min; runs in {runs}\n")
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through `dp_train`, which kills its child
    sys.exit(main())
