"""The evaluation report's files: per-dataset summaries of the per-image rows, `per_image.csv`,
`per_dataset.csv`, `error_vs_depth.csv`, the paper's tables, the PNG plots and `report.md`
(dp_train/evaluation/report.py records the rows during `test`; this module only writes them)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from dp_train.evaluation.boundary import BOUNDARY_THRESHOLDS
from dp_train.evaluation.depth_accuracy import ALIGNED_METRIC_NAMES, DEPTH_METRIC_NAMES
from dp_train.evaluation.paper_tables import PaperTable, paper_tables
from dp_train.evaluation.seams import seam_ratio

matplotlib.use("Agg")  # files only, no display; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

FINE_DEPTH_EDGES = np.geomspace(1e-3, 1e4, 7 * 32 + 1)
"""Log-spaced depth bins (metres, 32 per decade) in which per-pixel errors are accumulated; the report's
coarser bins are groups of these, spread log-uniformly over the depth range actually seen."""
THRESHOLD_COLUMNS = [f"boundary_f1@{t:.3f}" for t in BOUNDARY_THRESHOLDS]
DEPTH_COLUMNS = list(DEPTH_METRIC_NAMES)
PRED_FOCAL_COLUMNS = [f"{c}_fpred" for c in DEPTH_COLUMNS]
ALIGNED_COLUMNS = [f"{c}_aligned" for c in ALIGNED_METRIC_NAMES]
SEAM_COLUMNS = ["seam_ratio", "seam_ratio_gt"]
"""The prediction's and the ground truth's seam ratios (dp_train/evaluation/seams.py): per image its own, per
dataset pooled from the images' sums (as the logged `seam_ratio`), not a mean of ratios."""
TEMPORAL_COLUMNS = ["temporal_change", "temporal_pairs"]
"""A sequence source's temporal change and its number of frame pairs (dp_train/evaluation/temporal.py): per
dataset only (it pairs frames), from the metric `test` logs; NaN for other sources."""
IMAGE_COLUMNS = (["dataset", "key", "empty"] + DEPTH_COLUMNS + PRED_FOCAL_COLUMNS + ALIGNED_COLUMNS
                 + ["boundary_f1", "boundary_recall", "f_true", "f_pred", "focal_rel_error"] + SEAM_COLUMNS
                 + THRESHOLD_COLUMNS)
"""Columns of `per_image.csv`; NaN (written empty) where a value does not apply."""
DATASET_COLUMNS = (["dataset", "n_images", "empty_images"] + DEPTH_COLUMNS + PRED_FOCAL_COLUMNS + ALIGNED_COLUMNS
                   + ["boundary_f1", "boundary_recall", "focal_median_rel_error", "focal_share_below_25",
                      "focal_share_below_50"] + SEAM_COLUMNS + TEMPORAL_COLUMNS + THRESHOLD_COLUMNS)
"""Columns of `per_dataset.csv`: image counts, means over images (NaN skipped), focal statistics, the
pooled seam ratios and a sequence source's temporal change."""
PLOTS = {
    "bars": "dataset_bars.png",
    "depth": "error_vs_depth.png",
    "thresholds": "boundary_f1_thresholds.png",
    "focal": "focal_scatter.png",
    "worst": "worst_cases.png",
}

Row = dict[str, Any]
Histograms = dict[str, np.ndarray]
"""Dataset name -> (2, bins) array: summed absolute relative error and pixel count per fine depth bin."""


# ------------------------------------------------------------------------------------------ summary


def merge_histograms(parts: list[Histograms]) -> Histograms:
    """Sum per-dataset depth histograms of several ranks."""
    merged: Histograms = {}
    for part in parts:
        for name, histogram in part.items():
            merged[name] = merged[name] + histogram if name in merged else histogram.copy()
    return merged


def _finite(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def nan_mean(values: list[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = _finite(values)
    return float(finite.mean()) if finite.size else math.nan


def focal_summary(errors: list[float]) -> Row:
    """Median relative focal error and shares below 25 % / 50 % (as `metrics.FocalMetrics`), NaN if none."""
    finite = _finite(errors)
    if not finite.size:
        return dict.fromkeys(("focal_median_rel_error", "focal_share_below_25", "focal_share_below_50"), math.nan)
    return {"focal_median_rel_error": float(np.median(finite)),
            "focal_share_below_25": float(np.mean(finite < 0.25)),
            "focal_share_below_50": float(np.mean(finite < 0.5))}


def pooled_seam_ratios(rows: list[Row]) -> Row:
    """`SEAM_COLUMNS` of a dataset from its images' summed `seam_sums` (NaN for rows without them)."""
    parts = [r["seam_sums"] for r in rows if "seam_sums" in r]
    if not parts:
        return dict.fromkeys(SEAM_COLUMNS, math.nan)
    return {name: seam_ratio(sums) for name, sums in zip(SEAM_COLUMNS, np.sum(parts, axis=0))}


def summarize(rows: list[Row], datasets: list[str], temporal: dict[str, Row] | None = None) -> list[Row]:
    """One `DATASET_COLUMNS` row per dataset: image count, per-image means, focal statistics, seam ratios, and
    `temporal`'s figures (`TEMPORAL_COLUMNS` by dataset, sequence sources only)."""
    summary = []
    for name in datasets:
        own = [r for r in rows if r["dataset"] == name]
        means = {c: nan_mean([r[c] for r in own]) for c in DATASET_COLUMNS
                 if c in IMAGE_COLUMNS[3:] and c not in SEAM_COLUMNS}
        empty = sum(r["empty"] for r in own)
        summary.append({"dataset": name, "n_images": len(own), "empty_images": empty} | means
                       | focal_summary([r["focal_rel_error"] for r in own]) | pooled_seam_ratios(own)
                       | (temporal or {}).get(name, dict.fromkeys(TEMPORAL_COLUMNS, math.nan)))
    return summary


def coarse_depth_edges(histograms: Histograms, bins: int) -> np.ndarray:
    """Indices into `FINE_DEPTH_EDGES` of `bins` log-uniform bins spanning the depths seen (all datasets)."""
    counts = sum(h[1] for h in histograms.values())
    seen = np.flatnonzero(counts) if histograms else np.array([], dtype=int)
    if not seen.size:
        return np.array([], dtype=int)
    return np.unique(np.round(np.linspace(seen[0], seen[-1] + 1, bins + 1)).astype(int))


def error_vs_depth(histograms: Histograms, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Per dataset, the pixel-weighted mean absolute relative error in each coarse depth bin (NaN if empty)."""
    curves = {}
    for name, histogram in histograms.items():
        sums = np.add.reduceat(histogram[0], edges[:-1])
        counts = np.add.reduceat(histogram[1], edges[:-1])
        curves[name] = np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)
    return curves


# ------------------------------------------------------------------------------------------- output


def write_csv(path: Path, rows: list[Row], columns: list[str]) -> None:
    """Write `rows` with the given columns; NaN becomes an empty field."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if isinstance(row[c], float) and math.isnan(row[c]) else row[c] for c in columns})


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_dataset_bars(summary: list[Row], path: Path) -> None:
    """Bars of AbsRel, delta1 and boundary F1 per dataset, one panel each."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    names = [s["dataset"] for s in summary]
    for ax, (column, title) in zip(axes, [("abs_rel", "AbsRel (lower is better)"), ("delta1", "δ1"),
                                          ("boundary_f1", "boundary F1")]):
        ax.bar(names, [np.nan_to_num(s[column]) for s in summary], color="tab:blue")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    _save(fig, path)


def _line_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str,
               logx: bool = False) -> None:
    """One line (with markers) per dataset."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", label=name)
    ax.set_xscale("log" if logx else "linear")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_focal_scatter(rows: list[Row], datasets: list[str], path: Path) -> None:
    """Predicted against true focal length (pixels) per dataset, with the identity line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name in datasets:
        pairs = np.array([(r["f_true"], r["f_pred"]) for r in rows if r["dataset"] == name], dtype=np.float64)
        ax.scatter(pairs[:, 0], pairs[:, 1], s=12, label=name)
    finite = _finite([v for r in rows for v in (r["f_true"], r["f_pred"])])
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    ax.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1)
    ax.set(xlabel="true focal length (px)", ylabel="predicted focal length (px)")
    ax.legend()
    _save(fig, path)


def plot_gallery(worst: list[Row], path: Path) -> None:
    """The worst images, one RGB | GT | prediction | error panel per row, titled with dataset, key and AbsRel."""
    fig, axes = plt.subplots(len(worst), 1, figsize=(10, 2.9 * len(worst)), squeeze=False)
    for ax, case in zip(axes[:, 0], worst):
        ax.imshow(case["panel"])
        ax.set_title(f"{case['dataset']} / {case['key']}: AbsRel {case['abs_rel']:.3f}", fontsize=9)
        ax.axis("off")
    _save(fig, path)


def _fmt(value: Any, percent: bool = False) -> str:
    """A table cell: 4 significant digits (or a percentage), '–' for NaN."""
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{100 * value:.1f} %" if percent else f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |"
                                                                          for r in rows]


SUMMARY_TABLE = [
    ("n images", "n_images", False), ("empty images", "empty_images", False), ("AbsRel", "abs_rel", False),
    ("δ1", "delta1", True),
    ("RMSE (m)", "rmse", False), ("AbsRel, pred. f", "abs_rel_fpred", False), ("δ1, pred. f", "delta1_fpred", True),
    ("RMSE, pred. f", "rmse_fpred", False), ("AbsRel, aligned", "abs_rel_aligned", False),
    ("δ1, aligned", "delta1_aligned", True), ("boundary F1", "boundary_f1", False),
    ("boundary recall", "boundary_recall", False), ("focal median rel. error", "focal_median_rel_error", True),
    ("focal < 25 %", "focal_share_below_25", True), ("focal < 50 %", "focal_share_below_50", True),
    ("seam ratio", "seam_ratio", False), ("seam ratio, GT", "seam_ratio_gt", False),
    ("temporal change", "temporal_change", True),
]
"""Columns of report.md's main table: header, `per_dataset.csv` column, shown as a percentage."""


def paper_markdown(tables: list[tuple[PaperTable, list[str], list[Row]]]) -> list[str]:
    """report.md's section with the paper's tables (values with the paper's decimals, '–' where missing)."""
    if not tables:
        return []
    lines = ["", "## The paper's tables", "",
             f"This checkpoint beside the paper's Depth Pro, for the benchmarks evaluated (`paper_<table>.csv`). "
             "Comparable only where the data and protocol are the paper's: see dp_train's docs/evaluation.md.", ""]
    for table, header, rows in tables:
        lines += [f"### {table.title}", ""]
        lines += _table(header, [[_paper_cell(row[c], 2 if c == "avg. rank" else table.digits) for c in header]
                                 for row in rows]) + [""]
    return lines[:-1]


def _paper_cell(value: Any, digits: int) -> str:
    """A cell of a paper table: fixed decimals, '–' for NaN, text as it is."""
    return _fmt(value) if isinstance(value, str) or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown_report(summary: list[Row], edges_m: np.ndarray, curves: dict[str, np.ndarray], worst: list[Row],
                    plots: list[str], tables: list[tuple[PaperTable, list[str], list[Row]]] = (),
                    empty: list[Row] = ()) -> str:
    """report.md: the per-dataset table, the paper's tables, the error-vs-depth table, the worst images, the
    images with nothing to score and links to the plots."""
    lines = ["# Evaluation report", "",
             "Metric depth with the ground-truth focal length, and with the FOV head's predicted focal length "
             "(\"pred. f\"), at the ground truth's own resolution (the prediction resized bilinearly to it), "
             "inside each source's `depth_range`. Means over images; boundary F1 on metric, non-sparse depth ground "
             "truth (neighbour pairs with an invalid pixel left out), boundary recall on images with a matte; "
             "relative (non-metric) depth: AbsRel and δ1 after aligning each prediction to its ground truth by "
             "least-squares scale and shift in inverse depth (\"aligned\"); \"empty images\": images with depth "
             "ground truth but no pixel to score (listed below), left out of every mean; "
             "seam ratio: the prediction's change across the patch encoder's window seams over its change elsewhere, "
             "at the network's resolution, pooled over images (1: seams invisible; above 1: visible; \"GT\": the "
             "ground truth's on the same lines, non-sparse only; docs/evaluation.md); "
             "temporal change: the mean relative change of predicted depth between consecutive frames of a clip "
             "(`sequence: true` sources; it holds the scene's own motion where the camera or scene moves); "
             "'–': not applicable. Per image, with every metric: [per_image.csv](per_image.csv), per dataset: "
             "[per_dataset.csv](per_dataset.csv).", ""]
    lines += _table(["dataset"] + [h for h, _, _ in SUMMARY_TABLE],
                    [[s["dataset"]] + [_fmt(s[c], pct) for _, c, pct in SUMMARY_TABLE] for s in summary])
    lines += paper_markdown(list(tables))
    if edges_m.size > 1:
        bins = [f"{a:.3g}–{b:.3g} m" for a, b in zip(edges_m[:-1], edges_m[1:])]
        lines += ["", "## AbsRel by ground-truth depth", ""]
        cells = [[name] + [_fmt(float(v)) for v in curve] for name, curve in curves.items()]
        lines += _table(["dataset"] + bins, cells)
    if worst:
        lines += ["", f"## Worst {len(worst)} images by AbsRel", ""]
        lines += _table(["dataset", "key", "AbsRel"], [[w["dataset"], w["key"], _fmt(w["abs_rel"])] for w in worst])
    if empty:
        lines += ["", f"## {len(empty)} images with nothing to score", "",
                  "Written with depth, but no pixel inside the source's `depth_range` (or the metric depth limits).",
                  ""]
        lines += _table(["dataset", "key"], [[row["dataset"], row["key"]] for row in empty])
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, rows: list[Row], datasets: list[str], histograms: Histograms, worst: list[Row],
                 depth_bins: int = 8, temporal: dict[str, Row] | None = None) -> None:
    """Write report.md, the CSV files and the plots for the gathered records into `out_dir` (`temporal`: the
    sequence sources' `TEMPORAL_COLUMNS`, by dataset)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, datasets, temporal)
    write_csv(out_dir / "per_image.csv", rows, IMAGE_COLUMNS)
    write_csv(out_dir / "per_dataset.csv", summary, DATASET_COLUMNS)
    tables = paper_tables(summary)
    for table, header, table_rows in tables:
        write_csv(out_dir / f"paper_{table.name}.csv", table_rows, header)
    edges = coarse_depth_edges(histograms, depth_bins)
    curves = error_vs_depth({n: histograms[n] for n in datasets if n in histograms}, edges) if edges.size else {}
    edges_m = FINE_DEPTH_EDGES[edges]
    _write_depth_csv(out_dir / "error_vs_depth.csv", edges_m, curves)
    plots = _write_plots(out_dir, rows, datasets, summary, edges_m, curves, worst)
    empty = [row for row in rows if row["empty"]]
    (out_dir / "report.md").write_text(markdown_report(summary, edges_m, curves, worst, plots, tables, empty))


def _write_depth_csv(path: Path, edges_m: np.ndarray, curves: dict[str, np.ndarray]) -> None:
    """error_vs_depth.csv: one row per dataset and depth bin."""
    rows = [{"dataset": name, "depth_min_m": float(a), "depth_max_m": float(b), "abs_rel": float(v)}
            for name, curve in curves.items() for a, b, v in zip(edges_m[:-1], edges_m[1:], curve)]
    write_csv(path, rows, ["dataset", "depth_min_m", "depth_max_m", "abs_rel"])


def _write_plots(out_dir: Path, rows: list[Row], datasets: list[str], summary: list[Row], edges_m: np.ndarray,
                 curves: dict[str, np.ndarray], worst: list[Row]) -> list[str]:
    """Draw every plot that has data; returns the file names written."""
    written = []
    if summary:
        plot_dataset_bars(summary, out_dir / PLOTS["bars"])
        written.append(PLOTS["bars"])
        thresholds = {s["dataset"]: (BOUNDARY_THRESHOLDS, np.array([s[c] for c in THRESHOLD_COLUMNS]))
                      for s in summary if math.isfinite(s["boundary_f1"])}
        if thresholds:
            _line_plot(out_dir / PLOTS["thresholds"], thresholds, "neighbour inverse-depth ratio threshold",
                       "boundary F1")
            written.append(PLOTS["thresholds"])
    if curves:
        centres = np.sqrt(edges_m[:-1] * edges_m[1:])
        _line_plot(out_dir / PLOTS["depth"], {n: (centres, c) for n, c in curves.items()},
                   "ground-truth depth (m)", "AbsRel", logx=True)
        written.append(PLOTS["depth"])
    if _finite([r["f_pred"] for r in rows]).size:
        plot_focal_scatter(rows, datasets, out_dir / PLOTS["focal"])
        written.append(PLOTS["focal"])
    if worst:
        plot_gallery(worst, out_dir / PLOTS["worst"])
        written.append(PLOTS["worst"])
    return written
