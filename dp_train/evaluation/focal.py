"""Focal length accuracy (`focal_errors`, `FocalMetrics`): relative error, its median and the shares of images
under 25 % and 50 % error (per-image errors kept as a list state, concatenated across DDP processes)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

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
