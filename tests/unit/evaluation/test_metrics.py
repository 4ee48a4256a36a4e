"""Metric depth, boundary and focal-length metrics: hand-computed values, reference parity, DDP merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers.paths import FIXTURES
from dp_train.evaluation.boundary import BoundaryF1, BoundaryRecall, si_boundary_f1, si_boundary_recall
from dp_train.evaluation.depth_accuracy import DEPTH_METRIC_NAMES, DepthMetrics, depth_metrics
from dp_train.evaluation.focal import FocalMetrics, focal_errors

BOUNDARY_CASES = range(6)


@pytest.fixture(scope="module")
def boundary_fixture() -> dict[str, np.ndarray]:
    """Apple's reference inputs and outputs for the boundary metrics."""
    path = FIXTURES / "boundary_metrics_expected.npz"
    assert path.is_file(), f"reference fixture missing: {path}"
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _tiny_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1x2x2 prediction / ground truth whose metrics are easy to work out by hand."""
    pred = torch.tensor([[[[2.0, 1.0], [4.0, 3.0]]]], dtype=torch.float64)
    gt = torch.tensor([[[[1.0, 1.0], [2.0, 4.0]]]], dtype=torch.float64)
    return pred, gt


def _random_batch(gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random positive depths with some invalid ground truth and a random mask; one image fully masked."""
    gt = torch.rand(batch, 1, 8, 10, generator=gen, dtype=torch.float64) * 9 + 1
    pred = gt * torch.exp(0.2 * torch.randn(batch, 1, 8, 10, generator=gen, dtype=torch.float64))
    gt[:, :, 0, :3] = 0.0
    gt[:, :, 1, 0] = torch.nan
    mask = torch.rand(batch, 1, 8, 10, generator=gen) > 0.3
    mask[-1] = False
    return pred, gt, mask


# ----------------------------------------------------------------------------- metric depth


def test_depth_metrics_hand_computed() -> None:
    pred, gt = _tiny_pair()
    out = depth_metrics(pred, gt)
    assert out["abs_rel"].item() == pytest.approx((1 + 0 + 1 + 0.25) / 4, rel=1e-12)
    assert out["delta1"].item() == pytest.approx(0.25, rel=1e-12)  # ratios 2, 1, 2, 4/3
    assert out["rmse"].item() == pytest.approx(math.sqrt((1 + 0 + 4 + 1) / 4), rel=1e-12)
    log10 = (2 * math.log10(2) + abs(math.log10(0.75))) / 4
    assert out["log10"].item() == pytest.approx(log10, rel=1e-12)


def test_delta2_delta3_and_silog_hand_computed() -> None:
    gt = torch.tensor([[[1.0, 2.0], [4.0, 8.0]]], dtype=torch.float64)
    pred = gt * torch.tensor([[[1.1, 1 / 1.5], [1.9, 1 / 2.5]]], dtype=torch.float64)  # ratios 1.1, 1.5, 1.9, 2.5:
    # one under each of 1.25, 1.25^2 = 1.5625 and 1.25^3 = 1.953, one above all; predictions over and under
    out = depth_metrics(pred, gt)
    assert out["delta1"].item() == pytest.approx(0.25, rel=1e-12)
    assert out["delta2"].item() == pytest.approx(0.5, rel=1e-12)
    assert out["delta3"].item() == pytest.approx(0.75, rel=1e-12)
    errors = [math.log(1.1), -math.log(1.5), math.log(1.9), -math.log(2.5)]
    mean = sum(errors) / 4
    silog = 100 * math.sqrt(sum(e * e for e in errors) / 4 - mean * mean)
    assert out["silog"].item() == pytest.approx(silog, rel=1e-12)
    assert depth_metrics(3.7 * pred, gt)["silog"].item() == pytest.approx(silog, rel=1e-12)  # scale-invariant


def test_silog_stays_accurate_in_float32_for_small_errors() -> None:
    """A prediction off by a constant factor (invisible to SI-Log) times a 0.01 % ripple: float32 inputs give the
    float64 value (float32 logs err by ~5e-8, against a spread of ~1e-4: well under 1 %)."""
    gen = torch.Generator().manual_seed(4)
    gt = torch.rand(1, 64, 64, generator=gen, dtype=torch.float64) * 20 + 1
    pred = 1.5 * gt * (1 + 1e-4 * torch.randn(1, 64, 64, generator=gen, dtype=torch.float64))
    exact = depth_metrics(pred, gt)["silog"].item()
    assert depth_metrics(pred.float(), gt.float())["silog"].item() == pytest.approx(exact, rel=1e-2)


def test_depth_metrics_respects_mask_and_invalid_gt() -> None:
    pred, gt = _tiny_pair()
    mask = torch.tensor([[[[True, True], [True, False]]]])
    masked = depth_metrics(pred, gt, mask)
    gt_invalid = gt.clone()
    gt_invalid[0, 0, 1, 1] = torch.nan
    for out in (masked, depth_metrics(pred[:, 0], gt_invalid[:, 0])):  # (B,H,W) works too
        assert out["abs_rel"].item() == pytest.approx(2 / 3, rel=1e-12)
        assert out["delta1"].item() == pytest.approx(1 / 3, rel=1e-12)
        assert out["rmse"].item() == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
        assert out["log10"].item() == pytest.approx(2 * math.log10(2) / 3, rel=1e-12)


def test_depth_metrics_clamps_predictions() -> None:
    pred, gt = _tiny_pair()
    pred[0, 0, 0, 1] = -5.0
    out = depth_metrics(pred, gt)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_empty_images_are_nan_per_image_and_skipped_by_metric() -> None:
    pred, gt = _tiny_pair()
    pred, gt = pred.repeat(2, 1, 1, 1), gt.repeat(2, 1, 1, 1)
    gt[1] = 0.0
    per_image = depth_metrics(pred, gt)
    assert torch.isnan(per_image["abs_rel"][1])
    metric = DepthMetrics()
    metric.update(pred, gt)
    result = metric.compute()
    assert metric.images.item() == 1
    for name in DEPTH_METRIC_NAMES:
        assert result[name].item() == pytest.approx(per_image[name][0].item(), rel=1e-12)


def test_depth_metric_is_mean_of_per_image_values() -> None:
    gen = torch.Generator().manual_seed(1)
    metric = DepthMetrics()
    per_image: dict[str, list[torch.Tensor]] = {name: [] for name in DEPTH_METRIC_NAMES}
    for batch in (3, 1, 4):
        pred, gt, mask = _random_batch(gen, batch)
        metric.update(pred, gt, mask)
        values = depth_metrics(pred, gt, mask)
        for name in DEPTH_METRIC_NAMES:
            per_image[name].append(values[name][:-1])  # the last image of each batch is fully masked
    result = metric.compute()
    assert metric.images.item() == 2 + 0 + 3
    for name in DEPTH_METRIC_NAMES:
        expected = torch.cat(per_image[name]).mean()
        assert result[name].item() == pytest.approx(expected.item(), rel=1e-12)


# ----------------------------------------------------------------------------- boundary metrics


@pytest.mark.parametrize("case", BOUNDARY_CASES)
def test_si_boundary_f1_matches_reference(boundary_fixture: dict[str, np.ndarray], case: int) -> None:
    value = si_boundary_f1(boundary_fixture[f"case{case}_pred_depth"], boundary_fixture[f"case{case}_gt_depth"])
    assert isinstance(value, float)
    assert value == pytest.approx(float(boundary_fixture[f"case{case}_si_boundary_f1"]), abs=1e-9)


@pytest.mark.parametrize("case", BOUNDARY_CASES)
def test_si_boundary_recall_matches_reference(boundary_fixture: dict[str, np.ndarray], case: int) -> None:
    pred, alpha = boundary_fixture[f"case{case}_pred_depth"], boundary_fixture[f"case{case}_gt_alpha"]
    value = si_boundary_recall(pred, alpha)
    assert isinstance(value, float)
    assert value == pytest.approx(float(boundary_fixture[f"case{case}_si_boundary_recall"]), abs=1e-9)


@pytest.mark.parametrize("case", [1, 4])
def test_boundary_metrics_accept_numpy_and_torch(boundary_fixture: dict[str, np.ndarray], case: int) -> None:
    pred, gt, alpha = (boundary_fixture[f"case{case}_{k}"] for k in ("pred_depth", "gt_depth", "gt_alpha"))
    assert si_boundary_f1(torch.from_numpy(pred), torch.from_numpy(gt)) == si_boundary_f1(pred, gt)
    assert si_boundary_recall(torch.from_numpy(pred), alpha) == si_boundary_recall(pred, alpha)
    pred32 = pred.astype(np.float32)
    assert si_boundary_f1(torch.from_numpy(pred32), gt) == si_boundary_f1(pred32, gt)


@pytest.mark.parametrize("scale", [0.25, 3.7, 1000.0])
def test_boundary_metrics_are_scale_invariant(boundary_fixture: dict[str, np.ndarray], scale: float) -> None:
    for case in BOUNDARY_CASES:
        pred, gt, alpha = (boundary_fixture[f"case{case}_{k}"] for k in ("pred_depth", "gt_depth", "gt_alpha"))
        assert si_boundary_f1(scale * pred, gt) == pytest.approx(si_boundary_f1(pred, gt), abs=1e-12)
        assert si_boundary_recall(scale * pred, alpha) == pytest.approx(si_boundary_recall(pred, alpha), abs=1e-12)


@pytest.mark.parametrize("case", BOUNDARY_CASES)
@pytest.mark.parametrize("invalid_as", ["zero", "nan", "mask"])
def test_si_boundary_f1_with_invalid_pixels_is_the_reference_on_the_valid_part(
    boundary_fixture: dict[str, np.ndarray], case: int, invalid_as: str
) -> None:
    """A reference case embedded in a larger map whose other pixels are invalid ground truth (with noise in
    the prediction and in the hidden ground truth there): only pairs of two valid pixels count, so the score
    is the reference's on the case itself."""
    pred, gt = boundary_fixture[f"case{case}_pred_depth"], boundary_fixture[f"case{case}_gt_depth"]
    rng = np.random.default_rng(case)
    big_pred = rng.uniform(0.5, 50.0, (pred.shape[0] + 9, pred.shape[1] + 14))
    big_gt = rng.uniform(0.5, 50.0, big_pred.shape)
    window = (slice(4, 4 + pred.shape[0]), slice(6, 6 + pred.shape[1]))
    big_pred[window], big_gt[window] = pred, gt
    valid = np.zeros(big_gt.shape, dtype=bool)
    valid[window] = True
    if invalid_as == "mask":
        score = si_boundary_f1(big_pred, big_gt, torch.from_numpy(valid))
    else:
        big_gt[~valid] = 0.0 if invalid_as == "zero" else np.nan
        score = si_boundary_f1(big_pred, big_gt)
    assert score == pytest.approx(float(boundary_fixture[f"case{case}_si_boundary_f1"]), abs=1e-9)


def test_boundary_f1_ignores_pairs_with_an_invalid_pixel() -> None:
    gt = np.ones((4, 6))
    gt[:, 3:] = 3.0  # a step between columns 2 and 3
    gt[:, 2] = 0.0  # ... whose near side is invalid: no ground-truth contour is left
    pred = np.where(np.arange(6) >= 2, 3.0, 1.0) * np.ones((4, 1))  # a contour between columns 1 and 2
    assert si_boundary_f1(pred, gt) == 0.0
    metric = BoundaryF1()
    metric.update(torch.from_numpy(pred)[None], torch.from_numpy(np.ones((4, 6)))[None],
                  valid=torch.from_numpy(gt > 0)[None])
    assert metric.compute().item() == 0.0  # the valid map acts like invalid ground truth


def test_boundary_metric_conventions_without_edges() -> None:
    step = np.ones((6, 8))
    step[:, 4:] = 3.0  # one contour, seen only from the "left" direction
    square = np.full((6, 8), 3.0)
    square[2:4, 3:5] = 1.0  # a near square: contours in all four directions
    flat = np.full((6, 8), 2.0)
    assert si_boundary_f1(square, square) == pytest.approx(1.0, abs=1e-12)
    assert si_boundary_f1(step, step) == pytest.approx(0.25, abs=1e-12)  # directions without edges score 0
    assert si_boundary_f1(flat, step) == 0.0  # no predicted edges: precision = recall = 0
    assert si_boundary_recall(square, (square < 2).astype(float)) == pytest.approx(1.0, abs=1e-12)
    assert si_boundary_recall(step, np.zeros((6, 8))) == 0.0  # no ground-truth contour
    with pytest.raises(ValueError):
        si_boundary_f1(step[None], step[None])


def _boundary_batch(fixture: dict[str, np.ndarray], target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All fixture cases stacked as (6,1,H,W) predictions and (6,H,W) targets."""
    pred = torch.stack([torch.from_numpy(fixture[f"case{i}_pred_depth"]) for i in BOUNDARY_CASES])
    tgt = torch.stack([torch.from_numpy(fixture[f"case{i}_{target}"]) for i in BOUNDARY_CASES])
    return pred[:, None], tgt


@pytest.mark.parametrize(
    ("metric_cls", "target", "key"),
    [(BoundaryF1, "gt_depth", "si_boundary_f1"), (BoundaryRecall, "gt_alpha", "si_boundary_recall")],
)
def test_boundary_metric_classes_average_images(
    boundary_fixture: dict[str, np.ndarray], metric_cls: type, target: str, key: str
) -> None:
    pred, tgt = _boundary_batch(boundary_fixture, target)
    has_target = torch.tensor([True, False, True, True, False, True])
    metric = metric_cls()
    metric.update(pred[:4], tgt[:4], has_target[:4])
    metric.update(pred[4:], tgt[4:], has_target[4:])
    expected = np.mean([boundary_fixture[f"case{i}_{key}"] for i in BOUNDARY_CASES if has_target[i]])
    assert metric.compute().item() == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- focal length


def _focal_values() -> tuple[torch.Tensor, torch.Tensor]:
    """Errors 0.1, 0.5, 0.3, (skipped: gt 0), (skipped: gt NaN), 0.2."""
    pred = torch.tensor([110.0, 150.0, 260.0, 100.0, 7.0, 80.0])
    gt = torch.tensor([100.0, 100.0, 200.0, 0.0, torch.nan, 100.0])
    return pred, gt


def test_focal_errors_hand_computed() -> None:
    pred, gt = _focal_values()
    errors = focal_errors(pred[:, None], gt)
    torch.testing.assert_close(errors[[0, 1, 2, 5]], torch.tensor([0.1, 0.5, 0.3, 0.2]))
    assert torch.isnan(errors[[3, 4]]).all()


def test_focal_metrics_hand_computed() -> None:
    pred, gt = _focal_values()
    metric = FocalMetrics()
    metric.update(pred[:3], gt[:3])
    metric.update(pred[3:], gt[3:])
    result = metric.compute()
    assert result["median_rel_error"].item() == pytest.approx(0.25, abs=1e-6)  # middle of 0.2 and 0.3
    assert result["share_below_25"].item() == pytest.approx(2 / 4)
    assert result["share_below_50"].item() == pytest.approx(3 / 4)  # 0.5 itself is not below 50 %


# ----------------------------------------------------------------------------- DDP-style merging


def _assert_same_result(merged: object, single: object) -> None:
    """Two compute() results (tensor or dict of tensors) are equal."""
    if isinstance(single, dict):
        for key in single:
            torch.testing.assert_close(merged[key], single[key], rtol=1e-12, atol=1e-12, equal_nan=True)
    else:
        torch.testing.assert_close(merged, single, rtol=1e-12, atol=1e-12)


def _merged_equals_single(metric_cls: type, batches: list[tuple[torch.Tensor, ...]]) -> None:
    """Two instances fed different halves, then merged, compute what one instance fed everything computes."""
    single, first, second = metric_cls(), metric_cls(), metric_cls()
    half = len(batches) // 2
    for i, batch in enumerate(batches):
        single.update(*batch)
        (first if i < half else second).update(*batch)
    first.merge_state(second)
    _assert_same_result(first.compute(), single.compute())


def test_merged_depth_metrics_equal_single_process() -> None:
    gen = torch.Generator().manual_seed(2)
    _merged_equals_single(DepthMetrics, [_random_batch(gen, b) for b in (2, 3, 1, 2)])


def test_merged_boundary_metrics_equal_single_process(boundary_fixture: dict[str, np.ndarray]) -> None:
    for metric_cls, target in ((BoundaryF1, "gt_depth"), (BoundaryRecall, "gt_alpha")):
        pred, tgt = _boundary_batch(boundary_fixture, target)
        _merged_equals_single(metric_cls, [(pred[i : i + 2], tgt[i : i + 2]) for i in (0, 2, 4)])


def test_merged_focal_metrics_equal_single_process() -> None:
    gen = torch.Generator().manual_seed(3)
    gt = torch.rand(20, generator=gen) * 1000 + 200
    pred = gt * (1 + 0.6 * torch.randn(20, generator=gen))
    gt[3] = -1.0
    _merged_equals_single(FocalMetrics, [(pred[i : i + 5], gt[i : i + 5]) for i in range(0, 20, 5)])
