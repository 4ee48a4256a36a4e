"""The FOV head's objective, on samples with a known focal length only.

`l2_fov` (the paper's "L2 as the training loss", Sec. 3.3): squared error of the horizontal field of
view in radians, the quantity the head regresses; the target is 2 atan(W / 2f) of the sample's focal
length at network width W. The angle is bounded (0, pi), so long-focal images (f -> infinity, FOV ->
0) cannot dominate the batch as they would under L2 on f in pixels, and its magnitude (~1) suits the
gradient clip. `l1_log_focal` (an option): L1 on log focal length, where an error means the same
relative metric-depth error (D is proportional to f) whatever the focal length.
"""

from __future__ import annotations

import torch

from dp_train.losses.terms import EPS

FOV_LOSSES = ("l2_fov", "l1_log_focal")
"""Accepted `model.fov_loss` values."""


def fov_objective(fov_deg: torch.Tensor, f_px: torch.Tensor, width: int,
                  kind: str = "l2_fov") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """FOV head objective `kind` (one of FOV_LOSSES) over the samples with a known focal length.

    Samples without `f_px` are excluded, never guessed. Returns ({"loss", "log_focal"}, per-image
    loss); "log_focal" (mean absolute log focal error) is logged whatever the loss.
    """
    if kind not in FOV_LOSSES:
        raise ValueError(f"model.fov_loss={kind!r}: choose one of {FOV_LOSSES}")
    known = torch.isfinite(f_px) & (f_px > 0)
    f_px = torch.where(known, f_px, torch.ones_like(f_px)).float()
    half_angle = torch.deg2rad(fov_deg.float().clamp(1.0, 179.0)) / 2
    log_error = (torch.log(0.5 * width / torch.tan(half_angle)) - f_px.clamp(min=EPS).log()).abs()
    if kind == "l2_fov":
        error = (torch.deg2rad(fov_deg.float()) - 2 * torch.atan(0.5 * width / f_px)).square()
    else:
        error = log_error
    per_image = torch.where(known, error, torch.zeros_like(error))
    count = known.sum().clamp(min=1)
    loss = per_image.sum() / count
    log_focal = torch.where(known, log_error, torch.zeros_like(log_error)).sum() / count
    return {"loss": loss, "log_focal": log_focal.detach()}, per_image
