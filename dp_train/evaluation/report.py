"""Evaluation report for `python -m dp_train test`: per-image metrics, per-dataset tables and plots.

`EvaluationReport` is a Lightning callback. During `test` it records, for every
real (non-padding) image, at the ground truth's resolution (dp_train/evaluation/per_image.py):
the depth metrics (`depth_accuracy.DEPTH_METRIC_NAMES`) with the ground-truth focal
length and, when the network has a FOV head, with the predicted one; the
scale-invariant boundary F1 (metric, non-sparse depth; pairs with an invalid
pixel left out) in total and per ratio threshold; the boundary recall (images
with a matte); the seam ratio of the prediction and of its ground truth
(dp_train/evaluation/seams.py: at the network's resolution, where the window seams lie); predicted and
true focal length; the absolute relative error binned by ground-truth depth; per dataset, a sequence source's
temporal change (dp_train/evaluation/temporal.py);
and the worst images by AbsRel as RGB | GT | prediction | error panels. At the
end everything is gathered to rank 0, which writes into `out_dir`:
`report.md`, `per_image.csv`, `per_dataset.csv`, `error_vs_depth.csv`, the
PNG plots linked from the report, and the paper's Tab. 1-4 for the benchmarks
evaluated, beside the paper's numbers (dp_train/evaluation/paper_tables.py), in report.md
and as `paper_<table>.csv` (the files: dp_train/evaluation/report_files.py).

The images come from `test_step`'s outputs (`DepthProModule.test_step`: the network's outputs and the
images it scored, dp_train/evaluation/scoring.py), so the report and the logged metrics score the same
images from the same forward pass.
"""

from __future__ import annotations

import heapq
import itertools
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from dp_train.evaluation.per_image import EvaluatedImage, focal_from_fov
from dp_train.evaluation.boundary import BOUNDARY_WEIGHTS, si_boundary_f1_per_threshold, si_boundary_recall
from dp_train.evaluation.depth_accuracy import ALIGNED_METRIC_NAMES, depth_metrics
from dp_train.evaluation.focal import focal_errors
from dp_train.evaluation.seams import image_seam_sums, seam_inputs, seam_ratio
from dp_train.evaluation.report_compare import read_figures, write_against_start
from dp_train.model.network import seam_positions
from dp_train.evaluation.report_files import (
    ALIGNED_COLUMNS,
    DEPTH_COLUMNS,
    FINE_DEPTH_EDGES,
    PRED_FOCAL_COLUMNS,
    THRESHOLD_COLUMNS,
    Histograms,
    Row,
    merge_histograms,
    write_report,
)
from dp_train.runtime.per_rank import gather_per_rank
from dp_train.utils.visualize import depth_panel

PANEL_SIDE = 128
"""Worst-case panels are downsampled (by striding) to about this height."""


# ----------------------------------------------------------------------------------------- per image


def _depth_columns(pred_depth: Tensor, image: EvaluatedImage, suffix: str) -> Row:
    """One image's depth metrics (NaN without valid pixels), keyed `<name><suffix>`."""
    values = depth_metrics(pred_depth[None], image.gt_depth[None], image.valid[None])
    return {f"{name}{suffix}": float(values[name][0]) for name in DEPTH_COLUMNS}


def _aligned_columns(image: EvaluatedImage) -> Row:
    """A relative image's AbsRel and delta1 after per-image scale-and-shift alignment (NaN otherwise)."""
    if not image.relative_valid.any():
        return dict.fromkeys(ALIGNED_COLUMNS, math.nan)
    values = depth_metrics(*(x[None] for x in image.aligned()))
    return {f"{name}_aligned": float(values[name][0]) for name in ALIGNED_METRIC_NAMES}


def _depth_histogram(pred_depth: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(2, fine bins): summed |p - g| / g and pixel count of one image's valid pixels, by GT depth."""
    gt, pred = gt_depth[valid], np.maximum(pred_depth[valid], 1e-4)
    bins = np.clip(np.searchsorted(FINE_DEPTH_EDGES, gt, side="right") - 1, 0, FINE_DEPTH_EDGES.size - 2)
    size = FINE_DEPTH_EDGES.size - 1
    return np.stack([np.bincount(bins, np.abs(pred - gt) / gt, size), np.bincount(bins, minlength=size)])


def _boundary_columns(image: EvaluatedImage) -> Row:
    """Boundary F1 (total and per threshold; metric, non-sparse GT) and boundary recall (with a matte), else NaN."""
    row: Row = {"boundary_f1": math.nan, "boundary_recall": math.nan} | dict.fromkeys(THRESHOLD_COLUMNS, math.nan)
    inverse = 1.0 / image.canonical  # scale-invariant metrics: proportional to depth is enough
    if image.has_depth and not image.sparse:
        per_threshold = si_boundary_f1_per_threshold(inverse, image.gt_depth, image.valid)
        row |= dict(zip(THRESHOLD_COLUMNS, per_threshold.tolist()))
        row["boundary_f1"] = float(np.sum(per_threshold * BOUNDARY_WEIGHTS))
    if image.alpha is not None:
        row["boundary_recall"] = si_boundary_recall(inverse, image.alpha)
    return row


def seam_columns(pred: Tensor, batch: dict, image: EvaluatedImage, lines: tuple[int, ...]) -> Row:
    """The image's seam ratios (prediction, ground truth) and the sums they come from (`seam_sums`, which the
    per-dataset figure pools as the logged metric does)."""
    sums = image_seam_sums(*seam_inputs(pred, batch, image), lines).cpu().numpy()
    return {"seam_ratio": seam_ratio(sums[0]), "seam_ratio_gt": seam_ratio(sums[1]), "seam_sums": sums}


def _rgb(image: Tensor) -> np.ndarray:
    """(3,H,W) image in [-1, 1] -> (H,W,3) uint8."""
    return ((image.float().permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)


def worst_case_panel(image: Tensor, target: Tensor, pred: Tensor, valid: Tensor) -> np.ndarray:
    """A downsampled RGB | GT | prediction | error panel (canonical inverse depth, `visualize.depth_panel`)."""
    step = max(1, image.shape[-2] // PANEL_SIDE)
    maps = [x[0, ::step, ::step].float().cpu().numpy() for x in (target, pred)]
    return depth_panel(_rgb(image[:, ::step, ::step]), maps[0], maps[1], valid[0, ::step, ::step].cpu().numpy())


# ------------------------------------------------------------------------------------------ callback


def sequence_figures(pl_module: L.LightningModule) -> dict[str, Row]:
    """`TEMPORAL_COLUMNS` of every test source scored for temporal change, by name: its `TemporalChange` computed
    here (a collective on every rank; the module's own logging then reuses the cached value), since the
    figure pairs frames and so has no per-image row to gather."""
    figures = {}
    metrics = pl_module.eval_metrics
    for name in pl_module.source_names("test"):
        if f"test__{name}" in metrics and "temporal" in metrics[f"test__{name}"]:
            computed = metrics[f"test__{name}"]["temporal"].compute()
            figures[name] = {key: float(value) for key, value in computed.items()}
    return figures


class EvaluationReport(Callback):
    """Writes a per-image / per-dataset evaluation report with plots at the end of `test`.

    Args:
        out_dir: folder for `report.md`, the CSV files and the PNG plots (created; files overwritten).
        worst_cases: how many images with the highest AbsRel the gallery shows.
        depth_bins: log-spaced ground-truth depth bins of the error-vs-depth curve.
        baseline: an earlier report's folder (the starting weights' `test`): its figures go beside these, drops
            flagged (dp_train/evaluation/report_compare.py). Read when the callback is built, so it may be `out_dir`.
        drop_tolerance: the relative worsening flagged as a drop.
    """

    def __init__(self, out_dir: str = "runs/eval/report", worst_cases: int = 8, depth_bins: int = 8,
                 baseline: str | None = None, drop_tolerance: float = 0.02) -> None:
        self.out_dir = Path(out_dir)
        self.baseline = read_figures(baseline) if baseline else None
        self.drop_tolerance = drop_tolerance
        self.worst_cases = worst_cases
        self.depth_bins = depth_bins
        self._seam_lines: tuple[int, ...] = ()
        self._reset()

    def _reset(self) -> None:
        self._rows: list[Row] = []
        self._histograms: Histograms = {}
        self._worst: list[tuple[float, int, Row]] = []  # min-heap of the worst AbsRel on this rank
        self._counter = itertools.count()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start recording (the seam lines: those of the module's network)."""
        self._reset()
        self._seam_lines = seam_positions(pl_module.net.config)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: dict,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        """Record every real image `test_step` scored (its outputs: the network's `pred` and `fov` and the scored
        `images`, dp_train/evaluation/scoring.py; padding images are not among them)."""
        if outputs:
            self._record(pl_module.source_names("test"), outputs["pred"].detach(), outputs["fov"], batch,
                         outputs["images"])

    def _record(self, names: list[str], pred: Tensor, fov: Tensor | None, batch: dict,
                images: list[EvaluatedImage]) -> None:
        """Metrics, depth histograms and worst-case candidates of the scored images."""
        for image in images:
            i = image.index
            row = {"dataset": names[int(batch["source"][i])], "key": batch["key"][i], "empty": int(image.is_empty)}
            pred_depth = image.depth()
            row |= _depth_columns(pred_depth, image, "") | self._focal_columns(image, None if fov is None else fov[i])
            row |= _aligned_columns(image) | _boundary_columns(image) | seam_columns(pred, batch, image,
                                                                                     self._seam_lines)
            self._add(row, _depth_histogram(pred_depth.cpu().numpy(), image.gt_depth.cpu().numpy(),
                                            image.valid.cpu().numpy()))
            self._offer_worst(row, batch, i, pred)

    @staticmethod
    def _focal_columns(image: EvaluatedImage, fov: Tensor | None) -> Row:
        """Depth metrics with the predicted focal length and the focal errors (NaN without a FOV head)."""
        f_true = float(image.f_px)
        if fov is None:
            return dict.fromkeys(PRED_FOCAL_COLUMNS, math.nan) | {"f_true": f_true, "f_pred": math.nan,
                                                                   "focal_rel_error": math.nan}
        f_pred = focal_from_fov(fov, image.width)
        columns = _depth_columns(image.depth(f_pred[0]), image, "_fpred")
        return columns | {"f_true": f_true, "f_pred": float(f_pred[0]),
                          "focal_rel_error": float(focal_errors(f_pred, image.f_px)[0])}

    def _add(self, row: Row, histogram: np.ndarray) -> None:
        self._rows.append(row)
        total = self._histograms.get(row["dataset"])
        self._histograms[row["dataset"]] = histogram if total is None else total + histogram

    def _offer_worst(self, row: Row, batch: dict, i: int, pred: Tensor) -> None:
        """Keep the image's panel if it is among this rank's `worst_cases` highest AbsRel."""
        score = row["abs_rel"]
        if self.worst_cases <= 0 or not math.isfinite(score):
            return
        if len(self._worst) >= self.worst_cases and score <= self._worst[0][0]:
            return
        panel = worst_case_panel(batch["image"][i], batch["target"][i], pred[i], batch["valid"][i])
        entry = (score, next(self._counter), {"dataset": row["dataset"], "key": row["key"], "abs_rel": score,
                                              "panel": panel})
        (heapq.heappushpop if len(self._worst) >= self.worst_cases else heapq.heappush)(self._worst, entry)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather every rank's records (a collective) and write the report on rank 0."""
        temporal = sequence_figures(pl_module)
        gathered = gather_per_rank((self._rows, self._histograms, [entry[2] for entry in self._worst]))
        if not trainer.is_global_zero:
            return
        rows = [row for part in gathered for row in part[0]]
        histograms = merge_histograms([part[1] for part in gathered])
        worst = sorted((w for part in gathered for w in part[2]), key=lambda w: -w["abs_rel"])[: self.worst_cases]
        datasets = [name for name in pl_module.source_names("test") if any(r["dataset"] == name for r in rows)]
        write_report(self.out_dir, rows, datasets, histograms, worst, self.depth_bins, temporal)
        if self.baseline is not None:
            write_against_start(self.out_dir, self.baseline, self.drop_tolerance)
