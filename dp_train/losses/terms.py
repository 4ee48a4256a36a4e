"""The loss terms on canonical inverse depth, each masked by valid pixels and computed per image.

Pixelwise: MAE and MSE (optionally trimmed: the worst share of pixels per image dropped),
SSI-MAE (both maps normalised by median and mean absolute deviation first). Derivative terms on
a multi-scale pyramid: MAGE (mean absolute gradient error), MALE (mean absolute Laplacian error)
and MSGE (mean squared gradient error). Every function returns one value per image plus whether
the image had anything to measure, so that an image without valid pixels gives a finite loss
with zero gradient instead of NaN. Which term applies to which sample is dp_train.losses.objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6

SCHARR_X = torch.tensor([[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]]) / 32.0
"""Scharr first derivative: more rotation-invariant than Sobel, so boundaries at every orientation are
penalised alike. The paper names Scharr but not its normalisation; ours (/32) has unit gain on a ramp,
so MAGE is in inverse-depth units per pixel, comparable with MAE at equal weight (the raw kernel would
make MAGE 32x and MSGE 1024x larger at the same weight)."""
LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
"""5-point Laplacian: the smallest isotropic second-derivative stencil, sharp at one-pixel edges."""


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean of `values` over `mask` (B, ...) and whether the image had any masked pixel."""
    mask = mask.to(values.dtype)
    count = mask.flatten(1).sum(1)
    total = (values * mask).flatten(1).sum(1)
    return total / count.clamp(min=1), count > 0


def trimmed_mean(errors: torch.Tensor, mask: torch.Tensor, trim_fraction: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean of the errors over `mask` after dropping the largest `floor(trim * n_valid)` of them.

    `trim_fraction` may be a per-image tensor (e.g. 0.2 for real images, 0 for synthetic).
    """
    flat_err = errors.flatten(1)
    flat_mask = mask.flatten(1)
    n_valid = flat_mask.sum(1)
    trim = torch.as_tensor(trim_fraction, dtype=flat_err.dtype, device=flat_err.device).expand(n_valid.shape)
    keep = n_valid - torch.floor(trim * n_valid).long()
    ordered = torch.where(flat_mask, flat_err, torch.full_like(flat_err, float("inf"))).sort(dim=1).values
    ranks = torch.arange(ordered.shape[1], device=ordered.device)
    kept = ranks[None, :] < keep[:, None]
    total = torch.where(kept, ordered, torch.zeros_like(ordered)).sum(1)
    return total / keep.clamp(min=1).to(total.dtype), keep > 0


def masked_median(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image (lower) median of `x` over `mask`; 0 for an image without valid pixels."""
    flat = torch.where(mask.flatten(1), x.flatten(1), torch.full_like(x.flatten(1), float("inf")))
    ordered = flat.sort(dim=1).values
    n_valid = mask.flatten(1).sum(1)
    middle = ((n_valid - 1).clamp(min=0) // 2)[:, None]
    median = ordered.gather(1, middle)[:, 0]
    return torch.where(n_valid > 0, median, torch.zeros_like(median))


def ssi_normalize(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Remove per-image shift and scale: (x - median) / mean |x - median| over valid pixels."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    shifted = x - masked_median(x, mask).view(shape)
    scale, _ = masked_mean(shifted.abs(), mask)
    return shifted / scale.clamp(min=EPS).view(shape)


def mae(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, trim_fraction=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean absolute error over valid pixels, worst `trim_fraction` discarded."""
    return trimmed_mean((pred - target).abs(), valid, trim_fraction)


def mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, trim_fraction=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean squared error over valid pixels, worst `trim_fraction` discarded."""
    return trimmed_mean((pred - target).square(), valid, trim_fraction)


def ssi_mae(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, trim_fraction=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale-and-shift-invariant MAE: both maps normalised per image by median and mean absolute deviation."""
    return mae(ssi_normalize(pred, valid), ssi_normalize(target, valid), valid, trim_fraction)


def _stencil(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid-mode 3x3 filtering of a (B, 1, H, W) map (no padding: no invented border values)."""
    return F.conv2d(x, kernel.to(x)[None, None])


def _all_taps_valid(valid: torch.Tensor) -> torch.Tensor:
    """True where the whole 3x3 neighbourhood is valid (same grid as `_stencil`'s output)."""
    return F.avg_pool2d(valid.to(torch.float32), 3, stride=1) > 1 - 1e-6


def pyramid(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, scales: int):
    """Yield (pred, target, valid) at `scales` resolutions, halving each time.

    The blur + downsample is a 2x2 box average; a coarse pixel is valid only if
    all four fine pixels were, so depth is never averaged across a hole.
    """
    for level in range(scales):
        if level:
            if min(pred.shape[-2:]) < 6:
                return
            pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
            valid = F.avg_pool2d(valid.to(torch.float32), 2) > 1 - 1e-6
        yield pred, target, valid


def derivative_losses(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, scales: int = 6
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-image MAGE, MALE and MSGE averaged over a `scales`-level pyramid.

    A derivative counts only where all of its filter taps are valid. Returns
    {name: (per-image loss, image had any valid derivative)}.
    """
    sums = {name: [] for name in ("mage", "male", "msge")}
    for p, t, v in pyramid(pred, target, valid, scales):
        taps = _all_taps_valid(v)
        diff = p - t
        grad_x, grad_y = _stencil(diff, SCHARR_X), _stencil(diff, SCHARR_X.T)
        laplacian = _stencil(diff, LAPLACE)
        sums["mage"].append(masked_mean((grad_x.abs() + grad_y.abs()) / 2, taps))
        sums["msge"].append(masked_mean((grad_x.square() + grad_y.square()) / 2, taps))
        sums["male"].append(masked_mean(laplacian.abs(), taps))
    return {name: _mean_over_scales(levels) for name, levels in sums.items()}


def _mean_over_scales(levels: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Average per-image values over the scales where the image had valid derivatives."""
    values = torch.stack([v for v, _ in levels])
    present = torch.stack([p for _, p in levels]).to(values.dtype)
    count = present.sum(0)
    return (values * present).sum(0) / count.clamp(min=1), count > 0
