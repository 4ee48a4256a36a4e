"""Metric depth accuracy: AbsRel, log10, delta1-3, SI-Log and RMSE (the paper's Tab. 1 and 4 set, RMSE an
extra), each over an image's valid pixels, then averaged over images (`depth_metrics`, `DepthMetrics`); for
relative ground truth, AbsRel and delta1 after a per-image scale-and-shift alignment (`AlignedDepthMetrics`).

The `torchmetrics.Metric` states are sums and counts, so they synchronise across DDP processes with the usual
`dist_reduce_fx` reductions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

MIN_PRED_DEPTH = 1e-4
"""Predictions are clamped to at least this depth (metres) before ratios and logs."""

DEPTH_METRIC_NAMES = ("abs_rel", "delta1", "rmse", "log10", "delta2", "delta3", "silog")
"""Keys of `depth_metrics` / `DepthMetrics.compute()`, in state order."""


def as_batch(x: Tensor) -> Tensor:
    """View a (B,1,H,W) or (B,H,W) tensor as (B,H,W); any other shape is an error."""
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 3:
        return x
    raise ValueError(f"expected a (B,1,H,W) or (B,H,W) tensor, got shape {tuple(x.shape)}")


def _valid_pixels(gt: Tensor, mask: Tensor | None) -> Tensor:
    """Pixels with usable ground truth: finite, positive depth, and inside `mask` when given."""
    valid = torch.isfinite(gt) & (gt > 0)
    return valid if mask is None else valid & as_batch(mask).bool()


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
    pred, gt = as_batch(pred), as_batch(gt)
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
        has_pixels = _valid_pixels(as_batch(gt), mask).flatten(1).any(dim=1)
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
