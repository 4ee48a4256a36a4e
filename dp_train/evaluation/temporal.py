"""Temporal stability of predicted depth over the frames of clips (`TemporalChange`): the mean frame-to-frame
relative change `|d_t - d_{t-1}| / ((d_t + d_{t-1}) / 2)` over pixels, averaged over the consecutive pairs.

Frames may arrive in any order and on any process: under DDP a sequence source's shards are streamed by several
ranks and data workers, so frame t and frame t-1 are in general scored by different processes, in either order.
The metric therefore pairs nothing while it is updated. Each frame is kept as a small grid of its depth with its
clip id and frame index (list states, concatenated across processes by torchmetrics' sync); `compute` sorts the
gathered frames by (clip, frame), drops repeats of one frame (a sample that two ranks read), and pairs frame t
with frame t-1 of the same clip only; a missing frame breaks the chain there (no pair across the gap).

The grid is a nearest-neighbour sample of `GRID` x `GRID` pixels spread evenly over the frame, not an average:
an averaging downsample would smooth away the pixel-level flicker the figure is meant to show, while a sample of
pixels estimates the full-resolution mean without bias (4096 pixels: a close estimate of a mean over millions).
It also keeps the state small: 16 KiB per frame, 16 MiB per thousand frames on each process after the sync.

For a static camera every pixel is static, so the figure is the prediction's flicker; for a moving camera it
also holds the scene's real change (pass a static-pixel `mask` to leave moving pixels out).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

GRID = 64
"""Side of the grid of pixels each frame is kept as (see the module docstring)."""


def clip_id(name: str) -> int:
    """A stable 63-bit integer for a clip name: the same on every process and run (Python's `hash` is salted per
    process), so the ids of one clip gathered from several ranks agree."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1


def depth_grid(depth: Tensor, mask: Tensor | None = None) -> Tensor:
    """(B, GRID, GRID) float32 nearest-neighbour samples of (B, H, W) depth; NaN where the depth is not finite or
    not positive, or outside `mask` ((B, H, W) bool)."""
    depth = depth.float()
    keep = torch.isfinite(depth) & (depth > 0)
    if mask is not None:
        keep &= mask.bool()
    values = torch.where(keep, depth, torch.nan)[:, None]
    return F.interpolate(values, size=(GRID, GRID), mode="nearest-exact")[:, 0]


def relative_change(previous: Tensor, current: Tensor) -> Tensor:
    """(N,) mean over each pair's pixels valid in both of |d_t - d_{t-1}| / ((d_t + d_{t-1}) / 2); NaN for a pair
    with no such pixel. Both (N, H, W), NaN where invalid."""
    change = (current - previous).abs() / ((current + previous) / 2)
    return change.nanmean(dim=(-2, -1))


def consecutive_pairs(clips: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
    """Index pairs (i_{t-1}, i_t) of the entries that are frames t-1 and t of one clip, one entry per (clip,
    frame) kept (the first of repeats), in (clip, frame) order."""
    order = torch.sort(frames, stable=True).indices
    order = order[torch.sort(clips[order], stable=True).indices]
    clips, frames = clips[order], frames[order]
    same_clip = clips[1:] == clips[:-1]
    first = torch.cat([torch.ones(1, dtype=torch.bool, device=clips.device), ~(same_clip & (frames[1:] == frames[:-1]))])
    order, clips, frames = order[first], clips[first], frames[first]
    follows = (clips[1:] == clips[:-1]) & (frames[1:] - frames[:-1] == 1)
    return order[:-1][follows], order[1:][follows]


class TemporalChange(Metric):
    """Frame-to-frame relative change of predicted depth over clips, pooled over every consecutive pair.

    `update(depth, clips, frames, mask=None)` takes a batch of (B, H, W) depth maps (any positive depth-like
    map: the figure is scale-invariant per pair, so a fixed focal length per clip may be left out), their clip
    ids ((B,) int64, e.g. `clip_id(name)`) and frame indices ((B,) int64). `compute()` returns
    `{"temporal_change": mean over pairs, "temporal_pairs": number of pairs}` (NaN and 0 without a pair).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("grids", default=[], dist_reduce_fx="cat")
        self.add_state("clips", default=[], dist_reduce_fx="cat")
        self.add_state("frames", default=[], dist_reduce_fx="cat")

    def update(self, depth: Tensor, clips: Tensor, frames: Tensor, mask: Tensor | None = None) -> None:
        """Keep each frame's depth grid with its clip id and frame index (pairs are formed in `compute`)."""
        self.grids.append(depth_grid(depth, mask))
        self.clips.append(torch.as_tensor(clips, dtype=torch.int64, device=self.device).reshape(-1))
        self.frames.append(torch.as_tensor(frames, dtype=torch.int64, device=self.device).reshape(-1))

    def compute(self) -> dict[str, Tensor]:
        """Pair frames t-1 and t of each clip (after the sync) and average their relative change over pairs."""
        changes = self.pair_changes()
        valid = changes[torch.isfinite(changes)]
        mean = valid.double().mean() if valid.numel() else torch.tensor(torch.nan, dtype=torch.float64,
                                                                        device=self.device)
        return {"temporal_change": mean, "temporal_pairs": torch.tensor(float(valid.numel()), device=self.device)}

    def pair_changes(self) -> Tensor:
        """(P,) relative change of every consecutive pair of frames seen (NaN for a pair with no valid pixel)."""
        if not len(self.grids):
            return torch.zeros(0, device=self.device)
        grids, clips, frames = (dim_zero_cat(state) for state in (self.grids, self.clips, self.frames))
        previous, current = consecutive_pairs(clips, frames)
        return relative_change(grids[previous], grids[current])
