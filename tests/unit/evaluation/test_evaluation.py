"""Evaluation as the paper does it (App. C.6): metrics at the ground truth's own resolution, per-source
depth ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dp_train.data.datamodule import DepthDataModule
from dp_train.data.native import native_truth
from dp_train.shards import SampleMeta, ShardWriter, make_sample
from dp_train.data.samples import apply_flags
from dp_train.data.sources import SourceConfig
from dp_train.evaluation.per_image import evaluated_images
from dp_train.evaluation.depth_accuracy import depth_metrics

# Bilinear 2 -> 4 upsampling with half-pixel centres samples the input at -0.25, 0.25, 0.75, 1.25 (clamped to
# 0 and 1 at the borders): weights 0, 1/4, 3/4, 1 of the second input pixel along each axis.
WEIGHTS = np.array([0.0, 0.25, 0.75, 1.0])


def native_batch(gt: np.ndarray, valid: np.ndarray, pad: tuple[int, int] = (1, 2)) -> dict:
    """A one-image batch: a 2x2 network input (f_px 2, so depth = 1 / C) and its 4x4 ground truth stored in
    a larger, padded array, as `native_truth` lays out a batch with a bigger image beside it."""
    depth = np.zeros((gt.shape[0] + pad[0], gt.shape[1] + pad[1]), np.float32)
    depth[: gt.shape[0], : gt.shape[1]] = gt
    mask = np.zeros(depth.shape, bool)
    mask[: gt.shape[0], : gt.shape[1]] = valid
    return {
        "image": torch.zeros(1, 3, 2, 2), "f_px": torch.tensor([2.0]), "metric": torch.tensor([True]),
        "sparse": torch.tensor([False]), "has_alpha": torch.tensor([False]), "source": torch.tensor([0]),
        "gt_depth": torch.from_numpy(depth)[None, None], "gt_valid": torch.from_numpy(mask)[None, None],
        "gt_size": torch.tensor([gt.shape]),
    }


def test_prediction_is_upsampled_bilinearly_to_the_ground_truth_before_metrics():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # canonical inverse depth at the network input
    expected_c = 1.0 + WEIGHTS[None, :] * 1.0 + WEIGHTS[:, None] * 2.0  # by hand: C = 1 + w_col + 2 w_row
    gt = np.full((4, 4), 0.5, np.float32)
    gt[0, 0] = 0.8
    valid = np.ones((4, 4), bool)
    valid[3, 3] = False
    (image,) = evaluated_images(pred, native_batch(gt, valid), torch.tensor([True]))

    np.testing.assert_allclose(image.canonical.numpy(), expected_c, rtol=1e-6)
    assert np.array_equal(image.gt_depth.numpy(), np.where(valid, gt, 0))  # ground truth never resampled
    assert np.array_equal(image.valid.numpy(), valid)
    depth = 1.0 / expected_c  # f_px / (W C) with f_px = W = 2
    abs_rel = np.abs(depth - gt)[valid] / gt[valid]
    value = depth_metrics(image.depth()[None], image.gt_depth[None], image.valid[None])["abs_rel"]
    assert value.item() == pytest.approx(abs_rel.mean(), rel=1e-5)  # float32 ratios


def test_a_prediction_at_the_ground_truth_resolution_is_used_as_it_is():
    pred = torch.rand(1, 1, 4, 4) + 0.5
    (image,) = evaluated_images(pred, native_batch(np.ones((4, 4), np.float32), np.ones((4, 4), bool), (0, 0)),
                                torch.tensor([True]))
    assert torch.equal(image.canonical, pred[0, 0])


def plane(key: str, height: int, width: int, depth: np.ndarray | float = 4.0, metric: bool = True):
    """A sample of the given size with a constant (or given) depth map."""
    depth = np.broadcast_to(np.asarray(depth, np.float32), (height, width)).copy()
    meta = SampleMeta(dataset="planes", f_px=30.0, metric=metric, synthetic=False)
    return make_sample(key, np.zeros((height, width, 3), np.uint8), depth, meta)


def test_native_truth_pads_samples_of_different_sizes_without_resampling():
    samples = [plane("a", 3, 5, np.arange(15.0).reshape(3, 5) + 1), plane("b", 4, 2, 7.0)]
    batch = native_truth(samples)
    assert batch["gt_depth"].shape == (2, 1, 4, 5) and batch["gt_size"].tolist() == [[3, 5], [4, 2]]
    assert np.array_equal(batch["gt_depth"][0, 0, :3].numpy(), samples[0].depth)
    assert np.array_equal(batch["gt_depth"][1, 0, :, :2].numpy(), samples[1].depth)
    assert not batch["gt_valid"][0, 0, 3].any() and not batch["gt_valid"][1, 0, :, 2:].any()  # padding


@pytest.mark.parametrize(("stage", "native"), [("test", True), ("validate", True), ("fit", False)])
def test_test_and_validate_batches_carry_native_ground_truth_fit_validation_does_not(tmp_path, stage, native):
    with ShardWriter(tmp_path, "p", max_samples=10) as writer:
        writer.write(plane("p-0", 24, 40, 3.0))
    source = SourceConfig(name="p", urls=str(tmp_path / "p-000000.tar"))
    dm = DepthDataModule(val_sources=[source], test_sources=[source], image_size=16, batch_size=1, num_workers=0,
                         pin_memory=False)
    dm.setup(stage)
    (batch,) = list(dm.test_dataloader() if stage == "test" else dm.val_dataloader())
    assert batch["image"].shape[-2:] == (16, 16)
    assert ("gt_depth" in batch) == native
    if native:
        assert batch["gt_depth"].shape[-2:] == (24, 40) and bool((batch["gt_depth"] == 3.0).all())


# ----------------------------------------------------------------------------------------- depth ranges


def test_depth_range_invalidates_pixels_outside_it_inclusive_bounds():
    depth = np.array([[0.05, 0.1, 5.0], [10.0, 10.5, 0.0]], np.float32)
    sample = apply_flags(plane("r", 2, 3, depth), SourceConfig(name="r", urls="x.tar", depth_range=(0.1, 10.0)))
    assert sample.valid.tolist() == [[False, True, True], [True, False, False]]
    untouched = apply_flags(plane("r", 2, 3, depth), SourceConfig(name="r", urls="x.tar"))
    assert untouched.valid.tolist() == [[True, True, True], [True, True, False]]


def test_depth_range_leaves_relative_depth_alone():
    depth = np.array([[0.05, 20.0]], np.float32)
    sample = apply_flags(plane("r", 1, 2, depth, metric=False),
                         SourceConfig(name="r", urls="x.tar", depth_range=(0.1, 10.0)))
    assert sample.valid.all()


@pytest.mark.parametrize("bounds", [(10.0, 0.1), (-1.0, 5.0), (3.0, 3.0)])
def test_a_bad_depth_range_is_refused_naming_the_source(bounds):
    with pytest.raises(ValueError, match="source 'r': depth_range"):
        SourceConfig(name="r", urls="x.tar", depth_range=bounds)
