"""Losses on canonical inverse depth: exact values, invariances, masks, trimming, empty images, and the
objective table (which term applies to which kind of sample, SSI or not, the paper's stage rows)."""

from __future__ import annotations

import pytest
import torch

from dp_train.losses import Objective, Term, depth_objective, derivative_losses, mae, mse, ssi_mae
from dp_train.losses.terms import ssi_normalize


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
    weights = Objective(mae=1.0, mage=1.0, male=1.0, msge=1.0)
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
    weights = Objective(mae=1.0, mage=1.0)
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
    _, per_image = depth_objective(pred, target, valid, metric, torch.tensor([True, False]), sparse, Objective())
    assert per_image.tolist() == pytest.approx([4.5, 3.5])


def test_mse_exact_value_and_trimming():
    pred, target = maps(1.0, 2.0, 3.0, 4.0), maps(1.5, 2.0, 5.0, 0.0)
    valid = maps(1, 1, 1, 0).bool()
    assert mse(pred, target, valid)[0].item() == pytest.approx((0.25 + 0.0 + 4.0) / 3)
    errors = torch.arange(10, dtype=torch.float32).reshape(1, 1, 2, 5)
    loss, _ = mse(errors, torch.zeros_like(errors), torch.ones_like(errors, dtype=torch.bool), trim_fraction=0.2)
    assert loss.item() == pytest.approx(sum(i * i for i in range(8)) / 8)  # 8 and 9 dropped


def ramp(n: int, slope: float, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images whose prediction is target + slope * x (target a constant 1): MAE, MAGE etc. known exactly."""
    x = torch.arange(size, dtype=torch.float32).expand(n, 1, size, size)
    target = torch.ones(n, 1, size, size)
    return target + slope * x, target, torch.ones_like(target, dtype=torch.bool)


def test_derivative_losses_use_six_scales_by_default():
    """Eq. 2: L_{S,1,6}. On a ramp the slope doubles per scale, so the mean over scales counts them."""
    pred, target, valid = ramp(1, 0.01, size=256)
    terms, _ = depth_objective(pred, target, valid, *batch_flags(1), Objective(mae=0.0, mage=1.0))
    assert terms["mage"].item() == pytest.approx(sum(0.01 * 2**k / 2 for k in range(6)) / 6, rel=1e-5)


def test_a_number_is_shorthand_for_a_term_on_every_sample_and_negative_weights_are_refused():
    assert Objective(mse=2.0).terms()["mse"] == Term(weight=2.0)
    assert Objective().rows() == {"mae": Term()}  # MAE is always computed (logged), the rest when weighted
    with pytest.raises(ValueError, match=r"^model.loss.msge=-1.0: must be a weight >= 0"):
        Objective(msge=-1.0).check("model.loss")
    with pytest.raises(ValueError, match=r"^model.loss.mage.real=None: must be true or false"):
        Objective(mage=Term(real=None)).check("model.loss")


KINDS = {"real metric": (True, False), "synthetic metric": (True, True),
         "real non-metric": (False, False), "synthetic non-metric": (False, True)}
"""Sample kind -> (metric, synthetic) flags."""


@pytest.mark.parametrize("flag", ["metric", "non_metric", "real", "synthetic"])
def test_a_term_applies_exactly_to_the_sample_kinds_its_row_names(flag):
    """Switching one kind off removes the term from those samples only (the others keep their loss)."""
    pred, target, valid = ramp(4, 0.5)
    metric = torch.tensor([m for m, _ in KINDS.values()])
    synthetic = torch.tensor([s for _, s in KINDS.values()])
    sparse = torch.zeros(4, dtype=torch.bool)
    on = Objective(mae=0.0, mse=Term(weight=1.0))
    off = Objective(mae=0.0, mse=Term(weight=1.0, **{flag: False}))
    _, every = depth_objective(pred, target, valid, metric, synthetic, sparse, on)
    _, some = depth_objective(pred, target, valid, metric, synthetic, sparse, off)
    dropped = {"metric": metric, "non_metric": ~metric, "real": ~synthetic, "synthetic": synthetic}[flag]
    assert (every > 0).all()
    assert (some[dropped] == 0).all() and torch.equal(some[~dropped], every[~dropped])


def test_ssi_makes_a_derivative_term_scale_invariant_on_metric_samples():
    """A metric prediction right up to scale and shift: SSI-MAGE forgives it, plain MAGE does not."""
    torch.manual_seed(0)
    target = torch.rand(1, 1, 32, 32) + 0.5
    pred, valid = 3.0 * target + 1.0, torch.ones_like(target, dtype=torch.bool)
    plain, _ = depth_objective(pred, target, valid, *batch_flags(1), Objective(mae=0.0, mage=1.0))
    ssi, _ = depth_objective(pred, target, valid, *batch_flags(1), Objective(mae=0.0, mage=Term(ssi=True)))
    assert plain["mage"] > 0.1 and ssi["mage"] < 1e-5


def test_paper_stage1_condition_1c_per_sample_kind():
    """1C (Tab. 17): metric -> MAE, non-metric -> SSI-MAE, real samples trimmed and without gradient loss,
    synthetic samples (metric and non-metric) add SSI-MAGE."""
    torch.manual_seed(0)
    target = torch.rand(4, 1, 32, 32) + 0.5
    pred, valid = target + 0.1 * torch.rand_like(target), torch.ones_like(target, dtype=torch.bool)
    metric = torch.tensor([m for m, _ in KINDS.values()])
    synthetic = torch.tensor([s for _, s in KINDS.values()])
    stage1 = Objective(mae=1.0, mage=Term(real=False, ssi=True))
    _, per_image = depth_objective(pred, target, valid, metric, synthetic, torch.zeros(4, dtype=torch.bool), stage1)
    mage = derivative_losses(ssi_normalize(pred, valid), ssi_normalize(target, valid), valid)["mage"][0]
    expected = [mae(pred[:1], target[:1], valid[:1], 0.2)[0],  # real metric: trimmed MAE only
                mae(pred[1:2], target[1:2], valid[:1])[0] + mage[1],  # synthetic metric: MAE + SSI-MAGE
                ssi_mae(pred[2:3], target[2:3], valid[:1], 0.2)[0],  # real non-metric: trimmed SSI-MAE only
                ssi_mae(pred[3:], target[3:], valid[:1])[0] + mage[3]]  # synthetic non-metric: SSI-MAE + SSI-MAGE
    torch.testing.assert_close(per_image, torch.cat(expected))


def test_paper_stage2_condition_2a_sums_five_terms():
    pred, target, valid = ramp(1, 0.5)
    stage2 = Objective(mae=1.0, mse=1.0, mage=1.0, male=1.0, msge=1.0)
    terms, per_image = depth_objective(pred, target, valid, *batch_flags(1), stage2)
    assert set(terms) == {"loss", "mae", "mse", "mage", "male", "msge"}
    assert terms["mse"] > terms["mae"] > 0 and terms["mage"] > 0 and terms["msge"] > 0
    total = sum(terms[name] for name in ("mae", "mse", "mage", "male", "msge"))
    torch.testing.assert_close(terms["loss"], total)
    torch.testing.assert_close(per_image[0], total)


def _blurred_step(size: int = 64, noise: float = 0.002):
    """A vertical step in inverse depth (0.1 | 0.2), the prediction that step box-blurred over 9 px plus small
    noise (a network's output: soft at the edge, slightly rough elsewhere), and the 8 px band around the edge."""
    torch.manual_seed(0)
    x = torch.arange(size, dtype=torch.float32)
    target = torch.where(x < size // 2, 0.1, 0.2).expand(1, 1, size, size).contiguous()
    padded = torch.nn.functional.pad(target, (4, 4, 0, 0), mode="replicate")
    pred = torch.nn.functional.conv2d(padded, torch.full((1, 1, 1, 9), 1 / 9)) + noise * torch.randn_like(target)
    band = ((x >= size // 2 - 4) & (x < size // 2 + 4)).expand_as(target)
    return pred, target, band


def _objective(pred, target, **weights):
    flags = torch.ones(1, dtype=torch.bool)
    valid = torch.ones_like(target, dtype=torch.bool)
    return depth_objective(pred, target, valid, flags, flags, ~flags, Objective(**weights), 0.0, 6)[0]["loss"]


def test_at_unit_weight_the_scharr_terms_push_a_blurred_edge_far_less_than_mae():
    """The mechanism behind results/derivative_losses.md: with Scharr / 32, MAGE's gradient with respect to
    the prediction is a fraction of MAE's and MSGE's about 1/400 of it; the 5-point Laplacian (unnormalised)
    gives MALE more than MAE's. At weight 1 the derivative push is MALE's; MAGE and MSGE barely count."""
    pred, target, band = _blurred_step()
    size = {}
    for term in ("mae", "mage", "male", "msge"):
        p = pred.clone().requires_grad_(True)
        weights = {"mae": 0.0} | {term: 1.0}
        (grad,) = torch.autograd.grad(_objective(p, target, **weights), p)
        size[term] = grad.abs().sum().item()
        if term == "msge":  # p = 2: concentrated on the edge; p = 1 terms also follow the noise
            assert grad.abs()[band].sum() / grad.abs().sum() > 0.5
    assert size["mage"] < 0.5 * size["mae"]
    assert size["msge"] < 0.01 * size["mae"]
    assert size["male"] > size["mae"]


def test_weighted_to_match_mae_the_gradient_term_sharpens_a_blurred_edge():
    """A free prediction, 20 plain gradient steps at one learning rate: MAE + MAGE at weight 9 (its gradient
    about MAE's on the toy network, `tools/derivative_losses.py probe`) steepens the blurred edge several times
    more than at weight 1, and than MAE alone. Measure: the gain in the steepest neighbour step across the
    edge, relative to the true 0.1 step (MAE alone: about 0.01; MAGE 1: 0.02; MAGE 9: 0.2)."""
    pred, target, _ = _blurred_step()

    def steepest(p: torch.Tensor) -> float:
        return ((p[..., 1:] - p[..., :-1]).amax(-1).mean() / 0.1).item()

    def gain(**weights) -> float:
        p = pred.clone().requires_grad_(True)
        opt = torch.optim.SGD([p], lr=1e-4 * p.numel())
        for _ in range(20):
            opt.zero_grad()
            _objective(p, target, **weights).backward()
            opt.step()
        return steepest(p.detach()) - steepest(pred)

    mae_only, mage_1, mage_9 = gain(mae=1.0), gain(mae=1.0, mage=1.0), gain(mae=1.0, mage=9.0)
    assert mage_9 > 5 * mage_1 and mage_9 > 5 * mae_only
