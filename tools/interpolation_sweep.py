"""Weight interpolation sweep: which mix of start and fine-tuned weights to ship.

For each `a` in `--alphas`, `python -m dp_train export --ckpt CKPT --interpolate-from START --alpha a` writes
`(1-a)·start + a·fine-tuned`, and `python -m dp_train validate --weights <that file>` scores it on the recipes'
in-domain (`data.val_sources`) and guard (`data.guard_sources`) sets. Against a = 0 (the start itself) each row
gets the in-domain gain and every guard set's change (relative, as `GuardedSelection` logs them:
dp_train/evaluation/guard.py); the chosen `a` is the one with the largest in-domain gain among those whose every
guard set is within `--tolerance`, and its file is the one to export.

    python tools/interpolation_sweep.py --recipe recipes/finetune.yaml \\
        --ckpt runs/finetune/checkpoints/last.ckpt --start weights/depth_pro.pt
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
from pathlib import Path

import yaml

from dp_train.cli.main import main as dp_train
from dp_train.evaluation.guard import GUARD_METRICS, relative_worsening


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, action="append", required=True,
                   help="the fine-tuning run's recipes (repeatable, as `fit` took them): their val and guard sets")
    p.add_argument("--ckpt", type=Path, required=True, help="the fine-tuned checkpoint (.ckpt)")
    p.add_argument("--start", type=Path, required=True, help="the weights the run started from")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="comma-separated a in [0, 1], 0 included")
    p.add_argument("--metric", default="abs_rel", choices=list(GUARD_METRICS), help="the compared metric")
    p.add_argument("--tolerance", type=float, default=0.02, help="relative worsening a guard set may show")
    p.add_argument("--work-dir", type=Path, default=Path("runs/interpolation_sweep"),
                   help="exported files and validation logs, one folder per a (must not exist)")
    return p.parse_args(argv)


def source_names(recipes: list[Path]) -> tuple[list[str], list[str]]:
    """(in-domain, guard) source names of the job the recipes give, as `validate --print_config` prints it."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        dp_train(["validate", *(w for r in recipes for w in ("--recipe", str(r))), "--print_config"])
    data = (yaml.safe_load(printed.getvalue()) or {}).get("data") or {}
    return ([s["name"] for s in data.get("val_sources") or []], [s["name"] for s in data.get("guard_sources") or []])


def validate(args: argparse.Namespace, alpha: float) -> dict[str, float]:
    """Export the mix at `alpha` and validate it; {source: metric} from the run's CSV log."""
    run = args.work_dir / f"alpha_{alpha:g}"
    weights = run / "weights.safetensors"
    run.mkdir(parents=True)
    export = ["export", "--ckpt", str(args.ckpt), "--out", str(weights), "--interpolate-from", str(args.start),
              "--alpha", str(alpha)]
    logger = run / "logger.yaml"
    logger.write_text(yaml.safe_dump({"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                             "init_args": {"save_dir": str(run), "name": "csv"}},
                                                  "enable_progress_bar": False, "limit_val_batches": 1.0}}))
    recipes = [w for r in [*args.recipe, logger] for w in ("--recipe", str(r))]
    if dp_train(export) != 0 or dp_train(["validate", *recipes, "--weights", str(weights)]) != 0:
        raise SystemExit(f"error: a = {alpha:g}: export or validate failed (its message above)")
    logs = sorted(run.glob("csv/version_*/metrics.csv"))
    if not logs:
        raise SystemExit(f"error: a = {alpha:g}: validation logged nothing (no {run}/csv/version_*/metrics.csv)")
    with open(logs[-1], newline="") as f:
        row = {k: v for r in csv.DictReader(f) for k, v in r.items() if v}
    return {key.split("/")[1]: float(value) for key, value in row.items()
            if key.startswith("val/") and key.count("/") == 2 and key.endswith(f"/{args.metric}")}


def sweep_rows(results: dict[float, dict[str, float]], in_domain: list[str], guards: list[str], metric: str,
               tolerance: float) -> list[dict]:
    """Per a: the in-domain mean, its gain over a = 0, every guard set's change, and whether all are within."""
    mode = GUARD_METRICS[metric]
    start = results[0.0]
    start_mean = sum(start[n] for n in in_domain) / len(in_domain)
    rows = []
    for alpha, values in sorted(results.items()):
        mean = sum(values[n] for n in in_domain) / len(in_domain)
        changes = {n: relative_worsening(start[n], values[n], mode) for n in guards}
        rows.append({"alpha": alpha, "in_domain": mean, "gain": -relative_worsening(start_mean, mean, mode),
                     "changes": changes, "within": all(c <= tolerance for c in changes.values())})
    return rows


def chosen(rows: list[dict]) -> dict:
    """The row with the largest in-domain gain among those within tolerance (a = 0 always is)."""
    return max((r for r in rows if r["within"]), key=lambda r: (r["gain"], -r["alpha"]))


def markdown(rows: list[dict], guards: list[str], metric: str, pick: dict) -> str:
    """The sweep table and the chosen a."""
    lines = [f"| a | in-domain {metric} | gain | " + " | ".join(f"{g} change" for g in guards) + " | within |",
             "|---" * (4 + len(guards)) + "|"]
    for r in rows:
        cells = [f"{r['alpha']:g}", f"{r['in_domain']:.4g}", f"{100 * r['gain']:+.1f} %"]
        cells += [f"{100 * r['changes'][g]:+.1f} %" for g in guards] + ["yes" if r["within"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nchosen a = {pick['alpha']:g} (in-domain gain {100 * pick['gain']:+.1f} %)\n"


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and print its table and the chosen a (and `sweep.json` in the work dir)."""
    args = parse_args(argv)
    alphas = sorted({float(a) for a in args.alphas.split(",")})
    in_domain, guards = source_names(args.recipe)
    problem = (f"--work-dir {args.work_dir} exists: give a new one" if args.work_dir.exists() else
               "--alphas must include 0 (the start, what changes are measured from) and lie in [0, 1]"
               if 0.0 not in alphas or not all(0 <= a <= 1 for a in alphas) else
               "the recipes give no data.val_sources or no data.guard_sources" if not (in_domain and guards) else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    results = {alpha: validate(args, alpha) for alpha in alphas}
    rows = sweep_rows(results, in_domain, guards, args.metric, args.tolerance)
    pick = chosen(rows)
    (args.work_dir / "sweep.json").write_text(json.dumps({"rows": rows, "chosen": pick["alpha"]}, indent=1))
    print(markdown(rows, guards, args.metric, pick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
