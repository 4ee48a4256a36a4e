"""Evaluation metrics for Depth Pro: metric depth accuracy, boundary sharpness and focal length.

Three families, each as plain per-image functions plus `torchmetrics.Metric`
classes whose states are sums / counts (or concatenated lists) so that they
synchronise across DDP processes with the usual `dist_reduce_fx` reductions:

- metric depth (`depth_metrics`, `DepthMetrics`): AbsRel, log10, delta1-3,
  SI-Log and RMSE (the paper's Tab. 1 and 4 set, RMSE an extra), each over an
  image's valid pixels, then averaged over images; for relative ground truth,
  AbsRel and delta1 after a per-image scale-and-shift alignment
  (`AlignedDepthMetrics`);
- the Depth Pro paper's scale-invariant boundary metrics (`si_boundary_f1`,
  `si_boundary_recall`, `BoundaryF1`, `BoundaryRecall`), defined exactly as in
  Apple's public evaluation code (occluding contours from neighbour depth
  ratios, averaged over ratio thresholds 1.05..1.25), but vectorised; the
  depth F1 also takes ground truth with invalid pixels (a neighbour pair
  counts only when both of its pixels are valid);
- focal length (`focal_errors`, `FocalMetrics`): relative error, its median
  and the shares of images under 25 % and 50 % error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "ALIGNED_METRIC_NAMES",
    "ALPHA_THRESHOLD",
    "AlignedDepthMetrics",
    "BOUNDARY_THRESHOLDS",
    "BOUNDARY_WEIGHTS",
    "BoundaryF1",
    "BoundaryRecall",
    "DEPTH_METRIC_NAMES",
    "DepthMetrics",
    "FocalMetrics",
    "MIN_PRED_DEPTH",
    "depth_metrics",
    "focal_errors",
    "si_boundary_f1",
    "si_boundary_f1_per_threshold",
    "si_boundary_recall",
]

MIN_PRED_DEPTH = 1e-4
"""Predictions are clamped to at least this depth (metres) before ratios and logs."""

DEPTH_METRIC_NAMES = ("abs_rel", "delta1", "rmse", "log10", "delta2", "delta3", "silog")
"""Keys of `depth_metrics` / `DepthMetrics.compute()`, in state order."""

BOUNDARY_THRESHOLDS = np.linspace(1.05, 1.25, 10)
"""Neighbour inverse-depth ratios above which a pixel pair counts as an occluding contour."""
BOUNDARY_WEIGHTS = BOUNDARY_THRESHOLDS / BOUNDARY_THRESHOLDS.sum()
"""Weight of each threshold's score, proportional to the threshold (sums to 1)."""
ALPHA_THRESHOLD = 0.1
"""Matting alpha above which a pixel belongs to the foreground mask."""
_INVERSE_DEPTH_MIN_DEPTH = 1e-6
"""Depths are clipped to this before inversion in the boundary metrics (as the reference does)."""

ArrayLike = np.ndarray | Tensor


# ---------------------------------------------------------------------------
# Metric depth
# ---------------------------------------------------------------------------


def _as_batch(x: Tensor) -> Tensor:
    """View a (B,1,H,W) or (B,H,W) tensor as (B,H,W); any other shape is an error."""
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 3:
        return x
    raise ValueError(f"expected a (B,1,H,W) or (B,H,W) tensor, got shape {tuple(x.shape)}")


def _valid_pixels(gt: Tensor, mask: Tensor | None) -> Tensor:
    """Pixels with usable ground truth: finite, positive depth, and inside `mask` when given."""
    valid = torch.isfinite(gt) & (gt > 0)
    return valid if mask is None else valid & _as_batch(mask).bool()


def depth_metrics(
    pred: Tensor, gt: Tensor, mask: Tensor | None = None, min_pred: float = MIN_PRED_DEPTH
) -> dict[str, Tensor]:
    """Per-image metric depth errors over each image's valid pixels.

    Args:
        pred: predicted metric depth, (B,1,H,W) or (B,H,W); clamped to at least
            `min_pred` so that ratios and logarithms stay finite.
        gt: ground-truth depth of the same shape; pixels that are not finite or
            not positive are ignored.
        mask: optional extra boolean mask of pixels to evaluate (same shape).

    Returns:
        `DEPTH_METRIC_NAMES`, each a (B,) tensor (at least float32): AbsRel mean
        |p-g|/g; delta1/2/3 the share of max(p/g, g/p) < 1.25, 1.25^2, 1.25^3;
        RMSE sqrt(mean (p-g)^2); log10 mean |log10 p - log10 g|; SI-Log
        100 * sqrt(mean e^2 - (mean e)^2) with e = ln p - ln g (computed as the
        standard deviation of e about its mean, which keeps float32 accurate; the usual
        scale-invariant log error, Eigen et al. with lambda = 1, in percent: the
        paper names SI-Log without a formula, and its Tab. 4 values are of this
        size). Images without a valid pixel get NaN.
    """
    pred, gt = _as_batch(pred), _as_batch(gt)
    dtype = torch.promote_types(pred.dtype, torch.float32)
    valid = _valid_pixels(gt, mask)
    p = pred.to(dtype).clamp_min(min_pred)
    g = torch.where(valid, gt.to(dtype), torch.ones((), dtype=dtype, device=gt.device))
    count = valid.sum(dim=(-2, -1))

    def image_mean(x: Tensor) -> Tensor:
        return torch.where(valid, x, 0).sum(dim=(-2, -1)) / count

    ratio = torch.maximum(p / g, g / p)
    log_error = torch.log(p) - torch.log(g)
    return {
        "abs_rel": image_mean((p - g).abs() / g),
        "delta1": image_mean((ratio < 1.25).to(dtype)),
        "rmse": image_mean((p - g).square()).sqrt(),
        "log10": image_mean((torch.log10(p) - torch.log10(g)).abs()),
        "delta2": image_mean((ratio < 1.25**2).to(dtype)),
        "delta3": image_mean((ratio < 1.25**3).to(dtype)),
        "silog": 100 * image_mean((log_error - image_mean(log_error)[..., None, None]).square()).sqrt(),
    }


class DepthMetrics(Metric):
    """Dataset-level `DEPTH_METRIC_NAMES` (AbsRel, delta1-3, RMSE, log10, SI-Log): the mean over images of
    `depth_metrics`.

    States are per-metric sums of per-image values and an image count (both
    summed across processes), so the DDP result equals the single-process one.
    Images without any valid pixel are skipped rather than turning the mean NaN.
    `compute()` returns a dict keyed by `DEPTH_METRIC_NAMES` (NaN before any image).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, min_pred: float = MIN_PRED_DEPTH, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_pred = min_pred
        zeros = torch.zeros(len(DEPTH_METRIC_NAMES), dtype=torch.float64)
        self.add_state("sums", default=zeros, dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch: pred/gt (B,1,H,W) or (B,H,W), optional boolean mask of the same shape."""
        per_image = depth_metrics(pred, gt, mask, self.min_pred)
        has_pixels = _valid_pixels(_as_batch(gt), mask).flatten(1).any(dim=1)
        values = torch.stack([per_image[name] for name in DEPTH_METRIC_NAMES], dim=1)[has_pixels]
        # Out-of-place: states made by reset() under inference mode cannot be updated in place later.
        self.sums = self.sums + values.to(self.sums).sum(dim=0)
        self.images = self.images + has_pixels.sum()

    def compute(self) -> dict[str, Tensor]:
        """Mean of the per-image metrics over all images seen (and all processes)."""
        means = self.sums / self.images
        return {name: means[i] for i, name in enumerate(DEPTH_METRIC_NAMES)}


class AlignedDepthMetrics(DepthMetrics):
    """AbsRel and delta1 of relative (non-metric) sources after per-image scale-and-shift alignment
    (`evaluation.EvaluatedImage.aligned`), as `abs_rel_aligned` / `delta1_aligned`: their ground truth has no
    metres, so the unaligned metrics do not apply."""

    def compute(self) -> dict[str, Tensor]:
        """The mean aligned AbsRel and delta1 over images (NaN before any image)."""
        means = super().compute()
        return {f"{name}_aligned": means[name] for name in ALIGNED_METRIC_NAMES}


ALIGNED_METRIC_NAMES = ("abs_rel", "delta1")
"""The depth metrics reported for relative sources, after alignment (keys gain the suffix `_aligned`)."""


# ---------------------------------------------------------------------------
# Scale-invariant boundary metrics (Depth Pro paper, Sec. 4 / Apple eval code)
# ---------------------------------------------------------------------------


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
        pred_depth, target = _as_batch(pred_depth), _as_batch(target)
        valid = None if valid is None else _as_batch(valid)
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


# ---------------------------------------------------------------------------
# Focal length
# ---------------------------------------------------------------------------


def _valid_focal(gt_f: Tensor) -> Tensor:
    """Images whose ground-truth focal length is usable: finite and positive (flattened to (B,))."""
    gt = gt_f.reshape(-1)
    return torch.isfinite(gt) & (gt > 0)


def focal_errors(pred_f: Tensor, gt_f: Tensor) -> Tensor:
    """Relative focal-length error |f_pred - f_gt| / f_gt per image.

    Args:
        pred_f, gt_f: focal lengths in pixels, any shape with B elements ((B,), (B,1), ...).

    Returns:
        A (B,) tensor (at least float32); NaN where gt_f is not finite or not positive.
    """
    pred = pred_f.reshape(-1).to(torch.promote_types(pred_f.dtype, torch.float32))
    gt = gt_f.reshape(-1).to(pred)
    return torch.where(_valid_focal(gt), (pred - gt).abs() / gt, torch.nan)


class FocalMetrics(Metric):
    """Median relative focal-length error and the shares of images under 25 % and 50 % error.

    A median needs every value, so per-image errors are kept as a list state
    concatenated across processes (`dist_reduce_fx="cat"`). Images whose ground
    truth focal length is not finite or not positive are skipped. `compute()`
    returns `{"median_rel_error", "share_below_25", "share_below_50"}` (NaN
    before any image); the median of an even count is the mean of the middle two.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, pred_f: Tensor, gt_f: Tensor) -> None:
        """Add a batch of predicted and ground-truth focal lengths (B elements each)."""
        self.errors.append(focal_errors(pred_f, gt_f)[_valid_focal(gt_f)].double())

    def compute(self) -> dict[str, Tensor]:
        """Median error and shares of images with error < 0.25 and < 0.5, over all images seen."""
        empty = torch.zeros(0, dtype=torch.float64, device=self.device)
        errors = dim_zero_cat(self.errors) if len(self.errors) else empty
        if errors.numel() == 0:
            nan = torch.tensor(torch.nan, dtype=torch.float64, device=errors.device)
            return {"median_rel_error": nan, "share_below_25": nan, "share_below_50": nan}
        return {
            "median_rel_error": torch.quantile(errors, 0.5),
            "share_below_25": (errors < 0.25).double().mean(),
            "share_below_50": (errors < 0.5).double().mean(),
        }
