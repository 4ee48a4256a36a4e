"""Training objectives on canonical inverse depth, all masked by valid pixels and computed per image.

Stage 1: MAE for metric samples, scale-and-shift-invariant MAE for relative
ones, with the worst `trim_fraction` of pixels per real-world image discarded.
Stage 2 adds derivative losses on a multi-scale pyramid: MAGE (mean absolute
gradient error), MALE (mean absolute Laplacian error) and MSGE (mean squared
gradient error). Every function returns one value per image plus whether the
image had anything to measure, so that an image without valid pixels gives a
finite loss with zero gradient instead of NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPS = 1e-6

SCHARR_X = torch.tensor([[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]]) / 32.0
"""Scharr first derivative (normalised to unit gain on a ramp): more rotation-invariant than Sobel,
so boundaries at every orientation are penalised alike."""
LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
"""5-point Laplacian: the smallest isotropic second-derivative stencil, sharp at one-pixel edges."""


@dataclass(frozen=True)
class LossWeights:
    """Weight of each objective term; a stage of the curriculum is one setting of these."""

    mae: float = 1.0
    """MAE on canonical inverse depth (metric) or SSI-MAE (relative)."""
    mage: float = 0.0
    male: float = 0.0
    msge: float = 0.0


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
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, scales: int = 4
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


def depth_objective(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    metric: torch.Tensor,
    synthetic: torch.Tensor,
    sparse: torch.Tensor,
    weights: LossWeights,
    trim_fraction: float = 0.2,
    scales: int = 4,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The full depth objective with per-sample loss selection.

    Metric samples use MAE on canonical inverse depth, relative ones SSI-MAE
    (their derivative losses are taken on the normalised maps too); real-world
    samples drop their worst `trim_fraction` pixels; sparse (LiDAR) samples get
    no derivative losses. Returns the batch terms {"loss", "mae", "mage", ...}
    (each averaged over the images it applies to) and the per-image weighted
    loss (B,) for per-source logging.
    """
    pred, target = pred.float(), target.float()
    relative = ~metric
    norm_pred = torch.where(relative.view(-1, 1, 1, 1), ssi_normalize(pred, valid), pred)
    norm_target = torch.where(relative.view(-1, 1, 1, 1), ssi_normalize(target, valid), target)
    trim = torch.where(synthetic, 0.0, trim_fraction).to(pred)
    terms = {"mae": mae(norm_pred, norm_target, valid, trim)}
    if weights.mage or weights.male or weights.msge:
        derivative = derivative_losses(norm_pred, norm_target, valid, scales)
        terms |= {name: (value, present & ~sparse) for name, (value, present) in derivative.items()}
    per_image = torch.zeros_like(trim)
    logged = {}
    for name, (value, applies) in terms.items():
        weight = getattr(weights, name)
        applies = applies.to(value.dtype)
        logged[name] = (value * applies).sum() / applies.sum().clamp(min=1)
        per_image = per_image + weight * value * applies
    logged["loss"] = sum(getattr(weights, name) * logged[name] for name in terms)
    return logged, per_image


def fov_objective(fov_deg: torch.Tensor, f_px: torch.Tensor, width: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """FOV head objective: L1 on log focal length, over samples with a known focal only.

    The focal length implied by the predicted horizontal FOV is compared in log
    space, where an error means the same relative metric-depth error (D is
    proportional to f) whatever the focal length. Samples without `f_px` are
    excluded, never guessed. Returns ({"loss", "log_focal"}, per-image loss).
    """
    known = torch.isfinite(f_px) & (f_px > 0)
    half_angle = torch.deg2rad(fov_deg.float().clamp(1.0, 179.0)) / 2
    pred_f = 0.5 * width / torch.tan(half_angle)
    error = (pred_f.log() - f_px.clamp(min=EPS).log()).abs()
    per_image = torch.where(known, error, torch.zeros_like(error))
    loss = per_image.sum() / known.sum().clamp(min=1)
    return {"loss": loss, "log_focal": loss.detach()}, per_image
