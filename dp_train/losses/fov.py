"""The FOV head's objective, on samples with a known focal length only."""

from __future__ import annotations

import torch

from dp_train.losses.terms import EPS


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
