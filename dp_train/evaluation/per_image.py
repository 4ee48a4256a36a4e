"""The images of an evaluation batch, each with its prediction at the ground truth's resolution.

`test` and `validate` batches carry the ground truth at its own resolution
(`data/native.py`): the network's canonical inverse depth, predicted at the
network input, is resized bilinearly to it before any metric, as the paper
does (App. C.6) and as Apple's `infer` does (it resizes inverse depth, bilinear,
`align_corners=False`; canonical inverse depth is proportional to it). Batches
without it (validation during `fit`) are scored at the network resolution
against the resized target. The module's torchmetrics and the report's
per-image rows both start from `evaluated_images`, so they agree.

Each image is scored for what its ground truth holds: metric depth unaligned;
relative depth after a per-image least-squares scale and shift of the
prediction to it in inverse depth (`EvaluatedImage.aligned`); a sample written
without depth for its focal length and matte only; a depth sample with no pixel
to score is `is_empty` (counted, never dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EvaluatedImage", "MIN_CANONICAL", "align_scale_shift", "evaluated_images", "focal_from_fov"]

MIN_CANONICAL = 1e-4
"""Canonical inverse depth is clamped to at least this before depth = f / (W C) (bounds depth for f ~ W)."""
ALIGNED_FLOOR = 1.0
"""An aligned relative prediction is raised to at least this share of the image's smallest ground-truth inverse
depth: no farther than its farthest ground-truth point (as MiDaS-style evaluations cap aligned disparity at the
benchmark's maximum depth), so a fit that goes negative scores as an error, never as NaN or infinite depth."""


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
        has_truth: the sample was written with depth (metric or relative), not as a photo / matte only.
        relative_target: (H,W) inverse-depth-like ground truth of a relative sample (disparity, or 1 / its
            relative depth: the space the loss compares in), 0 where invalid; None for metric samples.
    """

    index: int
    canonical: Tensor
    gt_depth: Tensor
    valid: Tensor
    alpha: Tensor | None
    f_px: Tensor
    width: int
    sparse: bool
    has_truth: bool = True
    relative_target: Tensor | None = None
    _aligned: tuple[Tensor, Tensor, Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def depth(self, f_px: Tensor | None = None) -> Tensor:
        """Predicted metric depth (H,W) with the given focal length of the network input (default: the true one)."""
        return (self.f_px if f_px is None else f_px) / (self.width * self.canonical)

    @property
    def has_depth(self) -> bool:
        """Whether the image has any metric ground-truth pixel to score."""
        return bool(self.valid.any())

    @property
    def relative_valid(self) -> Tensor:
        """(H,W) bool: pixels of relative ground truth to score (none for metric samples)."""
        return torch.zeros_like(self.valid) if self.relative_target is None else self.relative_target > 0

    @property
    def is_empty(self) -> bool:
        """A sample written with depth that has no pixel to score (e.g. none inside the source's depth range)."""
        return self.has_truth and not (self.has_depth or bool(self.relative_valid.any()))

    def aligned(self) -> tuple[Tensor, Tensor, Tensor]:
        """(prediction, ground truth, mask) of a relative sample as depth-like maps, for AbsRel and delta1: the
        canonical inverse depth fitted per image to the inverse-depth-like ground truth by least-squares scale
        and shift over its valid pixels, then both inverted. Fitted once per image: the module's metrics and the
        report's per-image row share it."""
        if self._aligned is None:
            self._aligned = self._fit_aligned()
        return self._aligned

    def _fit_aligned(self) -> tuple[Tensor, Tensor, Tensor]:
        """The fit `aligned` returns (computed on its first call)."""
        mask = self.relative_valid
        target = self.relative_target.float()
        fitted = align_scale_shift(self.canonical, target, mask)
        floor = ALIGNED_FLOOR * target[mask].min() if mask.any() else torch.ones(())
        return 1.0 / fitted.clamp(min=floor), torch.where(mask, 1.0 / target.clamp(min=1e-12), 0.0), mask


def align_scale_shift(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """`s * pred + t` with the (s, t) minimising the squared error to `target` over `mask` (float64 normal
    equations; with fewer than two distinct values, only the shift is fitted)."""
    p, g = pred[mask].double(), target[mask].double()
    if p.numel() == 0:
        return pred
    p_mean, g_mean = p.mean(), g.mean()
    variance = (p - p_mean).square().sum()
    scale = (p - p_mean).mul(g - g_mean).sum() / variance if variance > 0 else torch.ones((), dtype=p.dtype)
    shift = g_mean - scale * p_mean
    return (scale * pred.double() + shift).to(pred.dtype)


def focal_from_fov(fov_deg: Tensor, width: int) -> Tensor:
    """Focal length in pixels, `0.5 W / tan(fov / 2)`, from the FOV head's horizontal FOV (degrees)."""
    return 0.5 * width / torch.tan(0.5 * torch.deg2rad(fov_deg.float().reshape(-1)))


def _resized(canonical: Tensor, size: tuple[int, int]) -> Tensor:
    """(H,W) map resized bilinearly (half-pixel centres, as `infer`) to `size`; unchanged when it fits."""
    if tuple(canonical.shape) == size:
        return canonical
    return F.interpolate(canonical[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def _truth(pred: Tensor, batch: dict, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Image i's (canonical inverse depth, valid map, metric depth, inverse-depth-like values, matte) at the
    resolution it is scored at: the ground truth's own (native batches) or the network's."""
    canonical = pred[i, 0].float()
    if "gt_depth" not in batch:
        target = batch["target"][i, 0].float()
        metric_depth = batch["f_px"][i] / (batch["image"].shape[-1] * target.clamp(min=1e-8))
        return canonical, batch["valid"][i, 0], metric_depth, target, batch["alpha"][i, 0] if "alpha" in batch else None
    height, width = (int(v) for v in batch["gt_size"][i])
    stored = batch["gt_depth"][i, 0, :height, :width].float()
    disparity = bool(batch["disparity"][i]) if "disparity" in batch else False
    inverse_like = stored if disparity else 1.0 / stored.clamp(min=1e-12)  # the training target's space
    alpha = batch["gt_alpha"][i, 0, :height, :width] if "gt_alpha" in batch else None
    return _resized(canonical, (height, width)), batch["gt_valid"][i, 0, :height, :width], stored, inverse_like, alpha


def evaluated_images(pred: Tensor, batch: dict, chosen: Tensor) -> list[EvaluatedImage]:
    """The `chosen` (B,) images of a batch, given the network's canonical inverse depth `pred` (B,1,S,S)."""
    width = batch["image"].shape[-1]
    images = []
    for i in torch.nonzero(chosen).flatten().tolist():
        canonical, stored_valid, gt, inverse_like, alpha = _truth(pred, batch, i)
        metric = bool(batch["metric"][i])
        has_truth = bool(batch["has_depth"][i]) if "has_depth" in batch else True
        relative = torch.where(stored_valid, inverse_like, 0.0) if has_truth and not metric else None
        valid = stored_valid & metric
        has_alpha = alpha is not None and bool(batch["has_alpha"][i])
        images.append(EvaluatedImage(
            index=i, canonical=canonical.clamp(min=MIN_CANONICAL), gt_depth=torch.where(valid, gt, 0.0),
            valid=valid, alpha=alpha if has_alpha else None, f_px=batch["f_px"][i].float(), width=width,
            sparse=bool(batch["sparse"][i]), has_truth=has_truth, relative_target=relative,
        ))
    return images
