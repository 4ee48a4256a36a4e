"""The Depth Pro paper's scale-invariant boundary metrics (`si_boundary_f1`, `si_boundary_recall`, `BoundaryF1`,
`BoundaryRecall`), defined exactly as in Apple's public evaluation code (occluding contours from neighbour depth
ratios, averaged over ratio thresholds 1.05..1.25), but vectorised; the depth F1 also takes ground truth with
invalid pixels (a neighbour pair counts only when both of its pixels are valid).

The `torchmetrics.Metric` states are a sum and a count, so they synchronise across DDP processes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from dp_train.evaluation.depth_accuracy import as_batch

BOUNDARY_THRESHOLDS = np.linspace(1.05, 1.25, 10)
"""Neighbour inverse-depth ratios above which a pixel pair counts as an occluding contour."""
BOUNDARY_WEIGHTS = BOUNDARY_THRESHOLDS / BOUNDARY_THRESHOLDS.sum()
"""Weight of each threshold's score, proportional to the threshold (sums to 1)."""
ALPHA_THRESHOLD = 0.1
"""Matting alpha above which a pixel belongs to the foreground mask."""
_INVERSE_DEPTH_MIN_DEPTH = 1e-6
"""Depths are clipped to this before inversion in the boundary metrics (as the reference does)."""

ArrayLike = np.ndarray | Tensor


def _as_float64_map(x: ArrayLike) -> np.ndarray:
    """A 2-D numpy float64 copy/view of an HxW array or tensor (evaluation runs in float64)."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected an HxW map, got shape {arr.shape}")
    return arr


def _directional_ratios(depth: np.ndarray, valid: np.ndarray | None = None) -> list[np.ndarray]:
    """Inverse-depth ratios of each pixel to its neighbour, for the directions left, top, right, bottom.

    Entry (i, j) of the "left" array is inv[i, j] / inv[i, j+1]: above a
    threshold, the left pixel of the pair is foreground. The vertical arrays
    are built on the transposed map so that, for all four, neighbour pairs
    along one contour-crossing line lie along an array row (what NMS scans).
    With a `valid` map, a pair with an invalid pixel gets NaN: never a contour.
    """
    inv = 1.0 / np.clip(depth, _INVERSE_DEPTH_MIN_DEPTH, None)
    if valid is not None:
        inv = np.where(valid, inv, np.nan)
    cols = np.ascontiguousarray(inv.T)
    with np.errstate(divide="ignore", invalid="ignore"):  # infinite depths: 0 / 0 is NaN, never a contour
        left, top = inv[:, :-1] / inv[:, 1:], cols[:, :-1] / cols[:, 1:]
        right, bottom = inv[:, 1:] / inv[:, :-1], cols[:, 1:] / cols[:, :-1]
    return [left, top, right, bottom]


def _valid_depth(gt: np.ndarray, valid: ArrayLike | None) -> np.ndarray | None:
    """Ground-truth pixels to score: finite, positive and inside `valid` when given (None: all of them)."""
    usable = np.isfinite(gt) & (gt > 0)
    if valid is not None:
        usable &= _as_float64_map(valid) > 0
    return None if usable.all() else usable


def _directional_mask_edges(mask: np.ndarray) -> list[np.ndarray]:
    """Foreground/background pairs of a binary mask, same directions and layout as `_directional_ratios`."""
    cols = np.ascontiguousarray(mask.T)
    left, top = mask[:, :-1] & ~mask[:, 1:], cols[:, :-1] & ~cols[:, 1:]
    right, bottom = mask[:, 1:] & ~mask[:, :-1], cols[:, 1:] & ~cols[:, :-1]
    return [left, top, right, bottom]


def _count_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each (ascending) threshold, how many values are strictly above it; NaN never counts.

    One pass over the data: values above the smallest threshold are binned by
    how many thresholds they exceed, then a reversed cumulative sum gives counts.
    """
    above = values[values > thresholds[0]]
    exceeded = np.searchsorted(thresholds, above, side="left")
    histogram = np.bincount(exceeded, minlength=thresholds.size + 1)
    return np.cumsum(histogram[::-1])[::-1][1:]


def _f1_per_threshold(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F1 per threshold (0 where precision and recall are both 0)."""
    total = precision + recall
    return np.where(total > 0, 2 * (recall * precision) / np.where(total > 0, total, 1.0), 0.0)


def si_boundary_f1_per_threshold(pred_depth: ArrayLike, gt_depth: ArrayLike,
                                  valid: ArrayLike | None = None) -> np.ndarray:
    """`si_boundary_f1` before the weighted average: the F1 at each of `BOUNDARY_THRESHOLDS`.

    Precision and recall per threshold are averaged over the four neighbour
    directions (a direction with no contours contributes 0); inputs are HxW
    depth maps (numpy or torch), evaluated in float64; pairs touching an
    invalid ground-truth pixel are left out (see `si_boundary_f1`). Returns a
    float64 array of `BOUNDARY_THRESHOLDS.size` values in [0, 1].
    """
    gt = _as_float64_map(gt_depth)
    usable = _valid_depth(gt, valid)
    pred_ratios = _directional_ratios(_as_float64_map(pred_depth), usable)
    gt_ratios = _directional_ratios(gt, usable)
    precision = np.zeros(BOUNDARY_THRESHOLDS.size)
    recall = np.zeros(BOUNDARY_THRESHOLDS.size)
    for pred, gt in zip(pred_ratios, gt_ratios):
        hits = _count_above(np.minimum(pred, gt), BOUNDARY_THRESHOLDS)
        precision += hits / np.maximum(_count_above(pred, BOUNDARY_THRESHOLDS), 1)
        recall += hits / np.maximum(_count_above(gt, BOUNDARY_THRESHOLDS), 1)
    return _f1_per_threshold(0.25 * precision, 0.25 * recall)


def si_boundary_f1(pred_depth: ArrayLike, gt_depth: ArrayLike, valid: ArrayLike | None = None) -> float:
    """Scale-invariant boundary F1 of a predicted depth map against a ground-truth depth map.

    Why: AbsRel barely notices blurred object edges; this scores how well
    occluding contours are placed. A neighbour pair is a contour when one
    pixel's inverse depth exceeds the other's by a ratio > t; only ratios are
    used, so the score ignores the (unknown) scale of the prediction. For each t
    in `BOUNDARY_THRESHOLDS`, precision and recall are averaged over the four
    neighbour directions (a direction with no contours contributes 0), F1 is
    formed (0 when both are 0) and the F1s are averaged with `BOUNDARY_WEIGHTS`.
    Matches Apple's reference `SI_boundary_F1` (inputs evaluated in float64).

    Ground truth with holes (iBims, range-limited benchmarks): a neighbour pair
    counts, in precision and in recall, only when both of its pixels are valid
    (finite, positive ground truth, inside `valid` when given). On a fully valid
    map this is the reference exactly; on a map whose valid pixels form a
    rectangle, it is the reference on that rectangle. The reference itself
    has no notion of invalid pixels (it would see contours at every hole).

    Args:
        pred_depth, gt_depth: HxW depth maps, numpy arrays or torch tensors.
        valid: optional HxW map of ground-truth pixels to score (nonzero = valid).

    Returns:
        The weighted F1 in [0, 1]. Speed (1536x1536, 2-core AMD EPYC CPU):
        about 0.09 s for a piecewise-smooth map, 0.19 s for pure noise.
    """
    return float(np.sum(si_boundary_f1_per_threshold(pred_depth, gt_depth, valid) * BOUNDARY_WEIGHTS))


def _run_ids(flat_idx: np.ndarray, width: int) -> np.ndarray:
    """Run number of each entry; a run is a maximal sequence of consecutive columns in one row.

    `flat_idx` are ascending row-major indices into an array `width` wide.
    """
    starts = np.ones(flat_idx.size, dtype=bool)
    starts[1:] = (np.diff(flat_idx) != 1) | (flat_idx[1:] % width == 0)
    return np.cumsum(starts) - 1


def _run_peaks(flat_idx: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """Positions (into `flat_idx`) of the first maximum of every run (see `_run_ids`)."""
    run_id = _run_ids(flat_idx, width)
    run_max = np.maximum.reduceat(values, np.flatnonzero(np.diff(run_id, prepend=-1)))
    maxima = np.flatnonzero(values == run_max[run_id])
    first = np.ones(maxima.size, dtype=bool)
    first[1:] = run_id[maxima[1:]] != run_id[maxima[:-1]]
    return maxima[first]


def _thinned_hits(ratio: np.ndarray, gt_edges: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per threshold, how many non-maximum-suppressed predicted contours fall on ground-truth contours.

    Predicted contours are pairs with ratio > t; each horizontal run of them is
    thinned to its single strongest pair (first one on ties). Runs at higher
    thresholds lie inside runs at the lowest one, so only runs at the lowest
    threshold that touch a ground-truth contour are kept (this bounds the work
    on noisy predictions), and each threshold filters the previous one's entries.
    """
    flat_idx = np.flatnonzero(ratio > thresholds[0])
    on_gt = gt_edges.ravel()[flat_idx]
    run_id = _run_ids(flat_idx, ratio.shape[1])
    keep = (np.bincount(run_id[on_gt], minlength=run_id.size) > 0)[run_id]
    flat_idx, on_gt = flat_idx[keep], on_gt[keep]
    values = ratio.ravel()[flat_idx]
    hits = np.zeros(thresholds.size, dtype=np.int64)
    for k, t in enumerate(thresholds):
        keep = values > t
        flat_idx, values, on_gt = flat_idx[keep], values[keep], on_gt[keep]
        if flat_idx.size:
            hits[k] = np.count_nonzero(on_gt[_run_peaks(flat_idx, values, ratio.shape[1])])
    return hits


def si_boundary_recall(pred_depth: ArrayLike, gt_alpha: ArrayLike) -> float:
    """Scale-invariant boundary recall of a predicted depth map against a matting alpha.

    Why: matting datasets have exact object outlines but no depth; this scores
    whether the prediction places a depth discontinuity on those outlines.
    Ground-truth contours are the boundaries of the mask `gt_alpha > 0.1`;
    predicted contours are neighbour inverse-depth ratios > t, thinned by
    non-maximum suppression along each scan line (rows for left/right, columns
    for top/bottom). Recall is averaged over the four directions (a direction
    with no ground-truth contour contributes 0) and over `BOUNDARY_THRESHOLDS`
    with `BOUNDARY_WEIGHTS`. Matches Apple's reference `SI_boundary_Recall`
    (inputs evaluated in float64).

    Args:
        pred_depth: HxW predicted depth, numpy array or torch tensor.
        gt_alpha: HxW matting alpha in [0, 1], numpy array or torch tensor.

    Returns:
        The weighted recall in [0, 1]. Speed (1536x1536, 2-core AMD EPYC CPU):
        about 0.05 s for a piecewise-smooth map, 0.08 s for pure noise.
    """
    ratios = _directional_ratios(_as_float64_map(pred_depth))
    gt_edges = _directional_mask_edges(_as_float64_map(gt_alpha) > ALPHA_THRESHOLD)
    recall = np.zeros(BOUNDARY_THRESHOLDS.size)
    for ratio, edges in zip(ratios, gt_edges):
        recall += _thinned_hits(ratio, edges, BOUNDARY_THRESHOLDS) / max(np.count_nonzero(edges), 1)
    return float(np.sum(0.25 * recall * BOUNDARY_WEIGHTS))


class _PerImageMean(Metric):
    """Mean over images of a per-image score computed on CPU (sum + count states, DDP-safe)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    @staticmethod
    def _score(pred_depth: Tensor, target: Tensor, valid: Tensor | None) -> float:
        """The per-image score (HxW maps in, float out); each subclass names its metric here."""
        raise NotImplementedError

    def update(self, pred_depth: Tensor, target: Tensor, has_target: Tensor | None = None,
               valid: Tensor | None = None) -> None:
        """Add a batch: (B,1,H,W) or (B,H,W) maps; images where `has_target` (B,) is False are skipped;
        `valid`, a boolean map batch, marks the target pixels to score (where the metric allows it)."""
        pred_depth, target = as_batch(pred_depth), as_batch(target)
        valid = None if valid is None else as_batch(valid)
        keep = torch.ones(len(pred_depth), dtype=torch.bool) if has_target is None else has_target.reshape(-1)
        for i in torch.nonzero(keep).flatten().tolist():
            self.total = self.total + self._score(pred_depth[i], target[i], None if valid is None else valid[i])
            self.images = self.images + 1

    def compute(self) -> Tensor:
        """Mean per-image score over all images seen (and all processes); NaN before any image."""
        return self.total / self.images


class BoundaryF1(_PerImageMean):
    """Dataset mean of `si_boundary_f1`; `update(pred_depth, gt_depth, has_target=None, valid=None)`."""

    @staticmethod
    def _score(pred_depth: Tensor, target: Tensor, valid: Tensor | None) -> float:
        return si_boundary_f1(pred_depth, target, valid)


class BoundaryRecall(_PerImageMean):
    """Dataset mean of `si_boundary_recall`; `update(pred_depth, gt_alpha, has_target=None)` (a matte has
    no invalid pixels: `valid` is refused)."""

    @staticmethod
    def _score(pred_depth: Tensor, target: Tensor, valid: Tensor | None) -> float:
        if valid is not None:
            raise ValueError("BoundaryRecall scores every pixel of the matte: it takes no valid map")
        return si_boundary_recall(pred_depth, target)
