"""The `seam` loss term: the prediction's change across window seams beyond the ground truth's, nothing for a real
edge on a seam, only valid spans, off unless weighted, fed the network's seam lines by the objective."""

from __future__ import annotations

import pytest
import torch

from dp_train.losses import Objective, depth_objective
from dp_train.losses.seams import SEAM_REACH, seam_excess

SIDE, LINES = 64, (24, 40)
"""A small square map and two seam lines at least 2 reach from each other and from the borders."""
STEP = 0.05


def ramp(step: float = 0.0, batch: int = 1) -> torch.Tensor:
    """(batch, 1, SIDE, SIDE) canonical inverse depth: a ramp plus `step` at every seam line, rows and columns."""
    x = torch.arange(SIDE, dtype=torch.float32)
    along = 0.5 + 0.01 * x + step * sum((x >= p).float() for p in LINES)
    return (along[None, :] + along[:, None]).expand(batch, 1, SIDE, SIDE).clone()


def flags(count: int, sparse: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(metric, synthetic, sparse) of `count` metric synthetic samples."""
    return torch.ones(count, dtype=torch.bool), torch.ones(count, dtype=torch.bool), torch.full((count,), sparse)


def every(pixels: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(pixels, dtype=torch.bool)


def test_a_step_the_ground_truth_lacks_costs_its_size_and_a_real_edge_costs_nothing():
    value, present = seam_excess(ramp(STEP), ramp(), every(ramp()), LINES)
    # on a seam span the prediction changes by the ramp's plus STEP, the ground truth by the ramp's alone; four
    # float32 values under 4 per span, each rounded by at most 2^-23
    assert value.item() == pytest.approx(STEP, abs=4 * 2.0**-23) and present.item()
    assert seam_excess(ramp(STEP), ramp(STEP), every(ramp()), LINES)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert seam_excess(ramp(), ramp(STEP), every(ramp()), LINES)[0].item() == 0.0  # smoother than the truth: free


def test_only_spans_with_both_ends_valid_count():
    valid = every(ramp())
    valid[..., LINES[0] - SEAM_REACH] = False  # the left end of every span across the first column line
    pred = ramp()
    pred[..., LINES[0]:] += 1.0  # a large step there only
    value, _ = seam_excess(pred, ramp(), valid, LINES)
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    value, present = seam_excess(pred, ramp(), torch.zeros_like(valid), LINES)
    assert value.item() == 0.0 and not present.item()


def test_the_objective_adds_the_term_only_when_weighted_with_the_networks_seams():
    pred, target = ramp(STEP, batch=2).requires_grad_(), ramp(batch=2)
    valid = every(target)
    terms, _ = depth_objective(pred, target, valid, *flags(2), Objective(), seam_lines=LINES)
    assert set(terms) == {"loss", "mae"}  # off by default: every recipe trains as before
    terms, _ = depth_objective(pred, target, valid, *flags(2), Objective(mae=0.0, seam=1.0), seam_lines=LINES)
    assert terms["seam"].item() == pytest.approx(STEP, abs=1e-5) and terms["loss"].item() == terms["seam"].item()
    terms["loss"].backward()
    # d|D|/d pred: -1 at a span's first end, +1 at its last, per span, over the spans of an image (2 lines x SIDE
    # per direction) and the 2 images: the gradient reaches the seam spans' ends only
    ends = torch.zeros(SIDE)
    for line in LINES:
        ends[line - SEAM_REACH] -= 1.0
        ends[line + SEAM_REACH] += 1.0  # the second line's first end is the first's last: they cancel
    expected = (ends[None, :] + ends[:, None]) / (2 * len(LINES) * SIDE * 2)
    torch.testing.assert_close(pred.grad[0, 0], expected, rtol=0, atol=0)
    sparse, _ = depth_objective(pred, target, valid, *flags(2, sparse=True), Objective(mae=0.0, seam=1.0),
                                seam_lines=LINES)
    assert sparse["seam"].item() == 0.0  # LiDAR: no neighbours to compare
