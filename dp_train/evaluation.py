"""The images of an evaluation batch, each with its prediction at the ground truth's resolution.

`test` and `validate` batches carry the ground truth at its own resolution
(`data/native.py`): the network's canonical inverse depth, predicted at the
network input, is resized bilinearly to it before any metric, as the paper
does (App. C.6) and as Apple's `infer` does (it resizes inverse depth, bilinear,
`align_corners=False`; canonical inverse depth is proportional to it). Batches
without it (validation during `fit`) are scored at the network resolution
against the resized target. The module's torchmetrics and the report's
per-image rows both start from `evaluated_images`, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EvaluatedImage", "MIN_CANONICAL", "evaluated_images", "focal_from_fov"]

MIN_CANONICAL = 1e-4
"""Canonical inverse depth is clamped to at least this before depth = f / (W C) (bounds depth for f ~ W)."""


@dataclass
class EvaluatedImage:
    """One image of a batch, at the resolution its metrics are computed at.

    Attributes:
        index: position in the batch.
        canonical: (H,W) float32 canonical inverse depth C, resized to the ground truth.
        gt_depth: (H,W) float32 ground-truth metric depth, 0 where not `valid`.
        valid: (H,W) bool, pixels with metric ground truth to score (inside the source's depth range).
        alpha: (H,W) matte for the boundary recall, or None.
        f_px: focal length (pixels) of the network input, from the ground truth (0 when unknown).
        width: network input width W; depth is f_px / (W C) at any resolution of C.
        sparse: the ground truth is sparse (LiDAR): no boundary F1.
    """

    index: int
    canonical: Tensor
    gt_depth: Tensor
    valid: Tensor
    alpha: Tensor | None
    f_px: Tensor
    width: int
    sparse: bool

    def depth(self, f_px: Tensor | None = None) -> Tensor:
        """Predicted metric depth (H,W) with the given focal length of the network input (default: the true one)."""
        return (self.f_px if f_px is None else f_px) / (self.width * self.canonical)

    @property
    def has_depth(self) -> bool:
        """Whether the image has any metric ground-truth pixel to score."""
        return bool(self.valid.any())


def focal_from_fov(fov_deg: Tensor, width: int) -> Tensor:
    """Focal length in pixels, `0.5 W / tan(fov / 2)`, from the FOV head's horizontal FOV (degrees)."""
    return 0.5 * width / torch.tan(0.5 * torch.deg2rad(fov_deg.float().reshape(-1)))


def _resized(canonical: Tensor, size: tuple[int, int]) -> Tensor:
    """(H,W) map resized bilinearly (half-pixel centres, as `infer`) to `size`; unchanged when it fits."""
    if tuple(canonical.shape) == size:
        return canonical
    return F.interpolate(canonical[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def evaluated_images(pred: Tensor, batch: dict, chosen: Tensor) -> list[EvaluatedImage]:
    """The `chosen` (B,) images of a batch, given the network's canonical inverse depth `pred` (B,1,S,S)."""
    width = batch["image"].shape[-1]
    native = "gt_depth" in batch
    images = []
    for i in torch.nonzero(chosen).flatten().tolist():
        canonical = pred[i, 0].float()
        metric = bool(batch["metric"][i])
        if native:
            height, gt_width = (int(v) for v in batch["gt_size"][i])
            canonical = _resized(canonical, (height, gt_width))
            valid = batch["gt_valid"][i, 0, :height, :gt_width] & metric
            gt = batch["gt_depth"][i, 0, :height, :gt_width].float()
            alpha = batch["gt_alpha"][i, 0, :height, :gt_width] if "gt_alpha" in batch else None
        else:
            valid = batch["valid"][i, 0] & metric
            gt = batch["f_px"][i] / (width * batch["target"][i, 0].float().clamp(min=1e-8))
            alpha = batch["alpha"][i, 0] if "alpha" in batch else None
        has_alpha = alpha is not None and bool(batch["has_alpha"][i])
        images.append(EvaluatedImage(
            index=i, canonical=canonical.clamp(min=MIN_CANONICAL), gt_depth=torch.where(valid, gt, 0.0),
            valid=valid, alpha=alpha if has_alpha else None, f_px=batch["f_px"][i].float(), width=width,
            sparse=bool(batch["sparse"][i]),
        ))
    return images
