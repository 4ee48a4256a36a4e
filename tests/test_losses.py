"""Losses on canonical inverse depth: exact values, invariances, masks, trimming, empty images."""

from __future__ import annotations

import pytest
import torch

from dp_train.losses import LossWeights, depth_objective, derivative_losses, mae, ssi_mae


def maps(*values, shape=(1, 1, 2, 2)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_mae_exact_value_and_mask():
    pred, target = maps(1.0, 2.0, 3.0, 4.0), maps(1.5, 2.0, 5.0, 0.0)
    valid = maps(1, 1, 1, 0).bool()
    loss, present = mae(pred, target, valid)
    assert loss.item() == pytest.approx((0.5 + 0.0 + 2.0) / 3) and present.item()


def test_trimming_removes_exactly_the_chosen_fraction_of_the_worst_pixels():
    errors = torch.arange(10, dtype=torch.float32).reshape(1, 1, 2, 5)
    valid = torch.ones_like(errors, dtype=torch.bool)
    loss, _ = mae(errors, torch.zeros_like(errors), valid, trim_fraction=0.2)
    assert loss.item() == pytest.approx(sum(range(8)) / 8)  # 8 and 9 dropped
    valid[0, 0, 0, 0] = False  # 9 valid pixels: floor(0.2 * 9) = 1 dropped
    loss, _ = mae(errors, torch.zeros_like(errors), valid, trim_fraction=0.2)
    assert loss.item() == pytest.approx(sum(range(1, 9)) / 8)


def test_trim_fraction_can_differ_per_image():
    errors = torch.arange(10, dtype=torch.float32).reshape(1, 1, 2, 5).repeat(2, 1, 1, 1)
    loss, _ = mae(errors, torch.zeros_like(errors), torch.ones_like(errors, dtype=torch.bool), torch.tensor([0.0, 0.2]))
    assert loss.tolist() == pytest.approx([4.5, 3.5])


def test_ssi_mae_is_invariant_to_positive_scale_and_shift():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    valid = torch.rand(2, 1, 8, 8) > 0.3
    base, _ = ssi_mae(pred, target, valid)
    moved, _ = ssi_mae(3.7 * pred + 2.0, 0.2 * target - 5.0, valid)
    torch.testing.assert_close(moved, base)
    assert ssi_mae(target * 2 + 1, target, valid)[0].max() < 1e-5


def test_derivative_losses_are_invariant_to_a_constant_offset_and_zero_for_a_match():
    torch.manual_seed(0)
    target = torch.rand(2, 1, 32, 32)
    valid = torch.ones_like(target, dtype=torch.bool)
    for name, (value, present) in derivative_losses(target + 0.7, target, valid).items():
        assert value.abs().max() < 1e-6 and present.all(), name


def test_derivative_losses_exact_on_a_ramp():
    """pred - target = a*x: Scharr gives a, Laplacian 0, on every scale (the ramp's slope doubles per scale)."""
    a = 0.5
    x = torch.arange(16, dtype=torch.float32).expand(1, 1, 16, 16)
    target = torch.zeros(1, 1, 16, 16)
    valid = torch.ones_like(target, dtype=torch.bool)
    terms = derivative_losses(a * x, target, valid, scales=2)
    slopes = [a, 2 * a]  # 2x2 average pooling doubles the slope per coarse pixel
    assert terms["mage"][0].item() == pytest.approx(sum(s / 2 for s in slopes) / 2)
    assert terms["msge"][0].item() == pytest.approx(sum(s * s / 2 for s in slopes) / 2)
    assert terms["male"][0].item() == pytest.approx(0.0, abs=1e-6)


def test_a_derivative_needs_all_its_taps_valid():
    """A wild value in an invalid pixel cannot leak into any derivative."""
    target = torch.zeros(1, 1, 16, 16)
    pred = target.clone()
    pred[0, 0, 8, 8] = 1000.0
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[0, 0, 8, 8] = False
    for name, (value, _) in derivative_losses(pred, target, valid).items():
        assert value.item() == 0.0, name


def batch_flags(n: int, metric=True, synthetic=True, sparse=False):
    return (torch.full((n,), metric), torch.full((n,), synthetic), torch.full((n,), sparse))


def test_empty_images_give_finite_loss_and_zero_gradient():
    pred = torch.rand(2, 1, 16, 16, requires_grad=True)
    target = torch.rand(2, 1, 16, 16)
    valid = torch.zeros_like(target, dtype=torch.bool)
    valid[1] = True
    weights = LossWeights(mae=1.0, mage=1.0, male=1.0, msge=1.0)
    terms, per_image = depth_objective(pred, target, valid, *batch_flags(2), weights)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and per_image[0] == 0
    assert pred.grad[0].abs().sum() == 0 and pred.grad[1].abs().sum() > 0
    pred.grad = None
    terms, _ = depth_objective(pred, target, torch.zeros_like(valid), *batch_flags(2), weights)
    terms["loss"].backward()
    assert terms["loss"] == 0 and torch.isfinite(pred.grad).all()


def test_objective_selects_the_loss_per_sample():
    torch.manual_seed(0)
    target = torch.rand(3, 1, 16, 16) + 0.5
    pred = 2.0 * target + 1.0  # right up to scale and shift
    valid = torch.ones_like(target, dtype=torch.bool)
    metric = torch.tensor([True, False, True])
    synthetic = torch.tensor([True, True, True])
    sparse = torch.tensor([False, False, True])
    weights = LossWeights(mae=1.0, mage=1.0)
    _, per_image = depth_objective(pred, target, valid, metric, synthetic, sparse, weights)
    expected_metric = (pred - target).abs().mean(dim=(1, 2, 3))
    assert per_image[1] < 1e-5  # relative sample: scale and shift forgiven
    assert per_image[2] == pytest.approx(expected_metric[2].item(), rel=1e-5)  # sparse: no derivative term
    assert per_image[0] > expected_metric[0]  # dense metric sample: derivative term added


def test_real_images_are_trimmed_and_synthetic_ones_are_not():
    target = torch.zeros(2, 1, 1, 10)
    pred = torch.arange(10, dtype=torch.float32).expand(2, 1, 1, 10)
    valid = torch.ones_like(target, dtype=torch.bool)
    metric, sparse = torch.tensor([True, True]), torch.tensor([False, False])
    _, per_image = depth_objective(pred, target, valid, metric, torch.tensor([True, False]), sparse, LossWeights())
    assert per_image.tolist() == pytest.approx([4.5, 3.5])
