"""The evaluation report against the start: an earlier report's per-dataset figures (the starting weights'
`test`, e.g. Apple's `depth_pro.pt`) beside this one's, with every drop beyond a tolerance flagged, so a
fine-tuned checkpoint's losses on the benchmarks it did not train for show next to its gains
(`EvaluationReport(baseline=...)`; the guard during training: dp_train/evaluation/guard.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from dp_train.evaluation.guard import relative_worsening

COMPARED = {"abs_rel": "min", "delta1": "max", "abs_rel_fpred": "min", "delta1_fpred": "max",
            "abs_rel_aligned": "min", "delta1_aligned": "max", "boundary_f1": "max", "boundary_recall": "max",
            "focal_median_rel_error": "min", "seam_ratio": "min"}
"""`per_dataset.csv` columns compared -> "min" when lower is better, "max" when higher is."""

Figures = dict[str, dict[str, float]]
"""Dataset -> {column: value} of the compared columns."""


def read_figures(report: str | Path) -> Figures:
    """The compared columns of a report folder's `per_dataset.csv` (or of that file); a ValueError naming the
    path when there is none."""
    path = Path(report)
    path = path / "per_dataset.csv" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"baseline report {report}: no per_dataset.csv (give the folder an earlier `test` wrote)")
    with open(path, newline="") as f:
        return {row["dataset"]: {c: float(row[c]) if row.get(c) else math.nan for c in COMPARED}
                for row in csv.DictReader(f)}


def against_start(start: Figures, now: Figures, tolerance: float) -> list[dict]:
    """One row per dataset in both and compared column with a finite value in both: start, now, relative
    worsening (`change`, 0.05: 5 % worse) and `drop` (worse by more than `tolerance`)."""
    rows = []
    for dataset in (d for d in now if d in start):
        for column, mode in COMPARED.items():
            before, after = start[dataset][column], now[dataset][column]
            if math.isfinite(before) and math.isfinite(after):
                change = relative_worsening(before, after, mode)
                rows.append({"dataset": dataset, "metric": column, "start": before, "now": after,
                             "change": change, "drop": bool(change > tolerance)})
    return rows


def write_against_start(out_dir: Path, start: Figures, tolerance: float) -> None:
    """`against_start.csv` and a section appended to `report.md`, from the report just written in `out_dir`."""
    rows = against_start(start, read_figures(out_dir), tolerance)
    with open(out_dir / "against_start.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "metric", "start", "now", "change", "drop"])
        writer.writeheader()
        writer.writerows(rows)
    drops = sum(row["drop"] for row in rows)
    lines = ["", "## Against the start", "",
             f"The baseline report's figures beside this one's; change: relative worsening (positive: worse); "
             f"**DROP**: worse by more than {100 * tolerance:.1f} % ({drops} of {len(rows)}). "
             "[against_start.csv](against_start.csv).", "",
             "| dataset | metric | start | now | change | |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['metric']} | {r['start']:.4g} | {r['now']:.4g} | {100 * r['change']:+.1f} % "
              f"| {'**DROP**' if r['drop'] else ''} |" for r in rows]
    with open(out_dir / "report.md", "a") as f:
        f.write("\n".join(lines) + "\n")
