"""Changes across the patch encoder's window seams: the span differences that the seam score
(dp_train/evaluation/seams.py) and the `seam` loss term measure, given the seam lines (pixel edges of the
network's output, `model.network.seam_positions`; the caller passes them, as this layer sees no network).

A span difference at pixel edge e of a row (between pixels e - 1 and e) is f[e + r] - f[e - r], r = `SEAM_REACH`:
the change over the 2r neighbour pairs around the edge, so a step the decoder smears over a few pixels still counts
whole. 2r = 16 pixels is one token: any pattern that repeats every 2, 4, 8 or 16 pixels (the decoder's stride-2
deconvolutions, the patch embedding) cancels from every span difference whatever its phase, so seam lines (all on
token edges) and the edges elsewhere (every phase) are compared on the changes that do not repeat.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

SEAM_REACH = 8
"""Pixels (at the network's resolution S) on each side of an edge that a span difference reaches: half a 16 px
token. A feature step between two windows' tokens reaches the output through the decoder's finest level, four
3x3 convolutions at S / 2 (about +-8 px), so most of it lies within the span."""


def span_differences(values: Tensor, valid: Tensor, reach: int = SEAM_REACH) -> tuple[Tensor, Tensor]:
    """|f[e + reach] - f[e - reach]| along the last axis for every pixel edge e from `reach` to n - `reach` - 1,
    and whether both ends are `valid`: each (..., n - 2 reach)."""
    span = 2 * reach
    stop = values.shape[-1] - span
    return (values[..., span:] - values[..., :stop]).abs(), valid[..., span:] & valid[..., :stop]


def edge_classes(length: int, lines: Sequence[int], reach: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For the edges `span_differences` measures along an axis of `length` pixels: (on a seam line, at least
    2 `reach` from every line: its span shares no pixel with a seam's), each (edges,) bool."""
    edges = torch.arange(reach, length - reach, device=device)
    lines = torch.as_tensor(list(lines), dtype=edges.dtype, device=device)
    if not lines.numel():
        return torch.zeros_like(edges, dtype=torch.bool), torch.ones_like(edges, dtype=torch.bool)
    distance = (edges[:, None] - lines[None, :]).abs().amin(dim=1)
    return distance == 0, distance >= 2 * reach


def seam_excess(pred: Tensor, target: Tensor, valid: Tensor, lines: Sequence[int], reach: int = SEAM_REACH
                ) -> tuple[Tensor, Tensor]:
    """Per-image mean, over the span differences across the seam `lines` (rows and columns of a square
    (B, 1, S, S) map) whose ends are both valid, of how much the prediction's change exceeds the target's:
    max(0, |D pred| - |D target|); and whether the image had any such span. A real edge on a seam costs nothing,
    a step the ground truth does not have costs its size."""
    total = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
    count = torch.zeros_like(total)
    for p, t, v in ((pred, target, valid), (pred.mT, target.mT, valid.mT)):
        change, both = span_differences(p, v.bool(), reach)
        on_line = both & edge_classes(p.shape[-1], lines, reach, p.device)[0]
        excess = (change - span_differences(t, v.bool(), reach)[0]).clamp(min=0)
        total = total + torch.where(on_line, excess, 0.0).flatten(1).sum(1)
        count = count + on_line.flatten(1).sum(1)
    return total / count.clamp(min=1), count > 0
