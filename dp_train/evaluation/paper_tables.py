"""The Depth Pro paper's benchmark tables (Tab. 1-4), filled with a checkpoint's results beside the paper's.

`EvaluationReport` hands its per-dataset summary to `paper_tables`, which lays
out, for the benchmarks among the evaluated sources, the paper's four tables:

- Tab. 1: metric depth delta1 (%) per dataset, and the average rank over the
  datasets of the methods present (this checkpoint with the true and with the
  predicted focal length, and the paper's Depth Pro);
- Tab. 2: boundary F1 on depth ground truth and boundary recall on mattes;
- Tab. 3: focal length, the shares of images under 25 % and 50 % error (%);
- Tab. 4 (App. A.2): AbsRel, Log10, delta2, delta3 (%), SI-Log;
- Tab. 18 (App. C.6): images per metric-depth benchmark, to see whether a run evaluated the paper's set.

A source joins a table when its name, lower-cased without '-', '_' or spaces,
is the paper's dataset name below (`sun_rgbd` -> `sunrgbd`, `P3M-10k` ->
`p3m10k`). `PAPER` holds the released model's numbers as printed in the paper
(arXiv 2410.02073v2: Tab. 1, 2, 3, App. Tab. 4 and 18), taken from the tables quoted
in the project's paper audit; recheck them against the paper before quoting.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

Row = dict[str, Any]

PAPER_METHOD = "Depth Pro (paper)"
METHODS = (("this checkpoint, true f", ""), ("this checkpoint, predicted f", "_fpred"))
"""Rows of this checkpoint: label, suffix of its `per_dataset.csv` columns."""


@dataclass(frozen=True)
class Column:
    """One value column of a paper table: a dataset and a metric of it."""

    dataset: str
    metric: str
    """Column of the report's per-dataset summary (`per_dataset.csv`)."""
    label: str
    percent: bool = False
    higher_is_better: bool = True


@dataclass(frozen=True)
class PaperTable:
    """A table of the paper: which columns, the paper's Depth Pro values, whether it ranks methods."""

    name: str
    title: str
    columns: tuple[Column, ...]
    paper: tuple[float, ...]
    ranked: bool = False
    digits: int = 3
    """Decimals printed in report.md (the paper's own)."""
    focal_rows: bool = True
    """Whether this checkpoint gets a row per focal length (depth metrics) or one row (focal, boundaries)."""


METRIC_SETS = ("booster", "eth3d", "middlebury", "nuscenes", "sintel", "sunrgbd")
TAB4_METRICS = (("abs_rel", "AbsRel", False, False), ("log10", "Log10", False, False),
                ("delta2", "δ2 (%)", True, True), ("delta3", "δ3 (%)", True, True), ("silog", "SI-Log", False, False))
TAB4_PAPER = {  # AbsRel, Log10, delta2 (%), delta3 (%), SI-Log
    "booster": (0.336, 0.118, 79.429, 96.524, 4.616), "eth3d": (0.327, 0.193, 61.309, 71.228, 10.170),
    "middlebury": (0.251, 0.089, 93.169, 96.401, 8.610), "nuscenes": (0.287, 0.164, 73.836, 84.252, 29.548),
    "sintel": (0.508, 0.230, 59.247, 71.138, 27.494), "sunrgbd": (0.113, 0.049, 98.506, 99.547, 7.841),
}
TAB18_IMAGES = {"booster": 228, "eth3d": 454, "ibims": 100, "middlebury": 15, "nuscenes": 881, "sintel": 1064,
                "sunrgbd": 5050}
FOCAL_SETS = {"dddp": (66.9, 85.8), "fivek": (74.2, 92.4), "ppr10k": (64.6, 88.8), "raise": (84.2, 96.4),
              "spaq": (68.4, 85.2), "zoom": (69.8, 91.6)}

TABLES = (
    PaperTable("tab1_delta1", "Tab. 1: zero-shot metric depth, δ1 (%)",
               tuple(Column(d, "delta1", d, percent=True) for d in METRIC_SETS),
               (46.6, 41.5, 60.5, 49.1, 40.0, 89.0), ranked=True, digits=1),
    PaperTable("tab2_boundaries", "Tab. 2: boundaries, F1 on depth / recall on masks",
               tuple(Column(d, "boundary_f1", f"{d} F1") for d in ("sintel", "spring", "ibims"))
               + tuple(Column(d, "boundary_recall", f"{d} R") for d in ("am2k", "p3m10k", "dis5k")),
               (0.409, 0.079, 0.176, 0.173, 0.168, 0.077), focal_rows=False),
    PaperTable("tab3_focal", "Tab. 3: focal length, share of images under 25 % / 50 % error (%)",
               tuple(Column(d, f"focal_share_below_{p}", f"{d} δ{p}", percent=True)
                     for d in FOCAL_SETS for p in (25, 50)),
               tuple(v for pair in FOCAL_SETS.values() for v in pair), digits=1, focal_rows=False),
    PaperTable("tab4_depth", "Tab. 4 (App. A.2): metric depth, other metrics",
               tuple(Column(d, m, f"{d} {label}", pct, better) for d in METRIC_SETS
                     for m, label, pct, better in TAB4_METRICS),
               tuple(v for d in METRIC_SETS for v in TAB4_PAPER[d])),
    PaperTable("tab18_images", "Tab. 18: images evaluated per benchmark",
               tuple(Column(d, "n_images", d) for d in TAB18_IMAGES), tuple(TAB18_IMAGES.values()), digits=0,
               focal_rows=False),
)


def dataset_key(name: str) -> str:
    """A source name as the paper's dataset name: lower case, without '-', '_' and spaces."""
    return re.sub(r"[-_\s]", "", name.lower())


def _value(summary: dict[str, Row], column: Column, suffix: str) -> float:
    """This checkpoint's value of a column (percent where the paper prints one), NaN where not evaluated."""
    row = summary.get(column.dataset)
    value = row.get(column.metric + suffix, math.nan) if row is not None else math.nan
    value = math.nan if value is None else float(value)
    return 100 * value if column.percent else value


def average_ranks(rows: list[list[float]], columns: tuple[Column, ...]) -> list[float]:
    """Each row's rank per column among the rows with a value there (1 best; ties share the mean rank),
    averaged over the columns where every row has a value (NaN when there is none)."""
    values = np.asarray(rows, dtype=np.float64)
    complete = [j for j in range(values.shape[1]) if np.isfinite(values[:, j]).all()]
    if not complete:
        return [math.nan] * len(rows)
    ranks = np.zeros((len(rows), len(complete)))
    for k, j in enumerate(complete):
        score = values[:, j] if columns[j].higher_is_better else -values[:, j]
        ranks[:, k] = [1 + np.sum(score > s) + 0.5 * (np.sum(score == s) - 1) for s in score]
    return ranks.mean(axis=1).tolist()


def fill_table(table: PaperTable, summary: dict[str, Row]) -> tuple[list[str], list[Row]]:
    """Header and rows (method, then one value per evaluated column) of a table; no rows when none of its
    datasets was evaluated."""
    columns = tuple(c for c in table.columns if c.dataset in summary)
    if not columns:
        return [], []
    paper = [table.paper[table.columns.index(c)] for c in columns]
    methods = METHODS if table.focal_rows else METHODS[:1]
    ours = [(label if table.focal_rows else "this checkpoint", [_value(summary, c, suffix) for c in columns])
            for label, suffix in methods]
    ours = [(label, values) for label, values in ours if any(math.isfinite(v) for v in values)]
    rows = ours + [(PAPER_METHOD, paper)]
    header = ["method"] + [c.label for c in columns] + (["avg. rank"] if table.ranked else [])
    ranks = average_ranks([values for _, values in rows], columns) if table.ranked else []
    out = []
    for index, (label, values) in enumerate(rows):
        out.append(dict(zip(header, [label, *values, *ranks[index : index + 1]])))
    return header, out


def paper_tables(summary: list[Row]) -> list[tuple[PaperTable, list[str], list[Row]]]:
    """The paper's tables with at least one evaluated dataset: (table, header, rows)."""
    by_dataset = {dataset_key(row["dataset"]): row for row in summary}
    filled = [(table, *fill_table(table, by_dataset)) for table in TABLES]
    return [(table, header, rows) for table, header, rows in filled if rows]
