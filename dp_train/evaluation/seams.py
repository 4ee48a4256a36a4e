"""Seam score: how visible the patch encoder's window seams are in predicted depth.

Depth Pro's patch encoder sees the image as 5x5 overlapping windows at full resolution and 3x3 at half
resolution; their features are stitched back together with a hard switch from one window to the next
(`model.network.merge_windows`). Where the windows disagree, the prediction can step across those switch lines:
the "jagged rectangular boundaries" users see. The lines are fixed by the network's size
(`model.network.seam_positions`: at 1536 px, columns and rows 336, 624, 912, 1200 and 576, 960).

What is measured, on the network's own S x S output (no resize: the line positions are exact there):

- the map is f = ln(canonical inverse depth), so a difference is a relative change, whatever the image's
  scale or focal length;
- at every pixel edge e of a row (or column), the span difference D(e) = |f[e + r] - f[e - r]|, over the 2r
  neighbour pairs around the edge (r = `losses.seams.SEAM_REACH` = 8, 2r one token: a step the decoder's
  convolutions smear over a few pixels still counts whole, and patterns repeating every 2 to 16 pixels cancel);
- seam ratio = mean D over edges on a seam line / mean D over edges at least 2r from every seam line (their
  spans share no neighbour pair with a seam's), both directions pooled, sums over all images (the metric's
  states), so an image weighs by its pixel count.

1 means the seams are invisible: the prediction changes across a seam line as much as anywhere else. Above 1
they show: on a ramp of slope a per pixel, a step of s (in ln units: 0.03 ~ 3 %) on every seam reads
1 + s / (2r a). The prediction is measured on every pixel (what a user sees); the ground truth's ratio
(`seam_ratio_gt`), on the same lines, over its valid spans (both ends valid) of non-sparse images: it is the
scene's own share of edges on those lines (a wall's corner on a seam is no fault of the network). It is the
ground truth as resized to the network input (nearest neighbour, as the training target): a target upsampled by
2, 4, 8 or 16 has the same number of source pixels in every span, so its blocks cancel; other factors leave a
bias of about one source pixel in the span's 2r / factor. Compare `seam_ratio` with `seam_ratio_gt`, and with
its own first value during fine-tuning (`evaluation.seam_watch.SeamWatch` warns when it rises).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from dp_train.evaluation.per_image import MIN_CANONICAL, EvaluatedImage
from dp_train.losses.seams import SEAM_REACH, edge_classes, span_differences
from dp_train.model.config import DepthProConfig
from dp_train.model.network import seam_positions

def seam_lines(cfg: DepthProConfig, height: int | None = None, width: int | None = None
               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(rows, columns) of the seam lines as pixel edges of a `height` x `width` map (default: the network's
    S x S, where they are exact): each S position p scaled to round(p * size / S), the edge nearest the line
    on a map resized from the network's output."""
    positions, size = seam_positions(cfg), cfg.img_size
    return tuple(round(p * (height or size) / size) for p in positions), tuple(
        round(p * (width or size) / size) for p in positions)


def seam_sums(values: Tensor, valid: Tensor, rows: Sequence[int], cols: Sequence[int], reach: int = SEAM_REACH
              ) -> Tensor:
    """The four sums a seam ratio is made of, (4,) float64: span differences on seam lines and their count, those
    elsewhere and their count, of (..., H, W) maps `values` (ln inverse depth) over their `valid` spans, across
    the column lines (along rows) and the row lines (along columns) together."""
    sums = torch.zeros(4, dtype=torch.float64, device=values.device)
    for maps, mask, lines in ((values, valid, cols), (values.mT, valid.mT, rows)):
        difference, both = span_differences(maps.double(), mask, reach)
        on_line, away = edge_classes(maps.shape[-1], lines, reach, maps.device)
        on, rest = both & on_line, both & away
        sums += torch.stack([torch.where(on, difference, 0.0).sum(), on.sum(), torch.where(rest, difference, 0.0).sum(),
                             rest.sum()]).double()  # masked sums, not indexing: no host sync on a GPU
    return sums


def seam_ratio(sums: Tensor | Sequence[float]) -> float:
    """Mean span difference on seam lines over the mean elsewhere, from `seam_sums`' four sums (NaN without
    both, or with no change anywhere else)."""
    seam, seams, rest, rests = (float(v) for v in sums)
    if not (seams and rests and rest):
        return math.nan
    return (seam / seams) / (rest / rests)


def log_inverse(inverse_depth: Tensor) -> Tensor:
    """ln of an inverse-depth-like map, clamped to at least `MIN_CANONICAL` as the scored prediction (float64)."""
    return inverse_depth.double().clamp(min=MIN_CANONICAL).log()


def image_seam_sums(pred: Tensor, target: Tensor, truth: Tensor, lines: Sequence[int], reach: int = SEAM_REACH
                    ) -> Tensor:
    """(2, 4) `seam_sums` of the prediction (every pixel) and of the ground truth (its `truth` pixels), for
    (..., S, S) canonical inverse depth `pred`, inverse-depth-like `target` and bool `truth` at the network's
    resolution, on the square's seam `lines`."""
    everywhere = torch.ones_like(truth, dtype=torch.bool)
    return torch.stack([seam_sums(log_inverse(pred), everywhere, lines, lines, reach),
                        seam_sums(log_inverse(target), truth.bool(), lines, lines, reach)])


def seam_inputs(pred: Tensor, batch: dict, image: EvaluatedImage) -> tuple[Tensor, Tensor, Tensor]:
    """(prediction, target, pixels of the target to count) of one image for the seam score, all at the
    network's resolution, where the seam lines are exact (the network's output, not the prediction resized to
    the ground truth; the target as the batch carries it at that resolution): the ground truth counts unless
    it is sparse (LiDAR: too few neighbouring pixels)."""
    i = image.index
    truth = batch["valid"][i] & (not image.sparse)
    return pred[i], batch["target"][i], truth


class SeamScore(Metric):
    """Seam ratio of predictions and of their ground truth over a dataset (see the module docstring).

    `update(pred, target, truth)` takes (B, S, S) or (B, 1, S, S) canonical inverse depth at the network's
    resolution, the inverse-depth-like target there and the bool map of target pixels to count (all False for
    an image without dense ground truth). States are the `seam_sums` of both, summed across processes, so the DDP
    result equals the single-process one. `compute()` returns `{"seam_ratio", "seam_ratio_gt"}` (NaN without
    anything to measure).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, network: DepthProConfig, reach: int = SEAM_REACH, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size, self.lines, self.reach = network.img_size, seam_positions(network), reach
        self.add_state("sums", default=torch.zeros(2, 4, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, truth: Tensor) -> None:
        """Add a batch's sums (prediction and ground truth)."""
        if pred.shape[-2:] != (self.size, self.size):
            raise ValueError(f"seam score: expected the network's {self.size} x {self.size} prediction, "
                             f"got {tuple(pred.shape[-2:])}")
        self.sums = self.sums + image_seam_sums(pred, target, truth, self.lines, self.reach).to(self.sums)

    def compute(self) -> dict[str, Tensor]:
        """The prediction's and the ground truth's seam ratios over everything seen."""
        ratios = [torch.tensor(seam_ratio(sums), dtype=torch.float64, device=self.device) for sums in self.sums]
        return dict(zip(("seam_ratio", "seam_ratio_gt"), ratios))
