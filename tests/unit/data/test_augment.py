"""The one-pass photometric transforms draw like albumentations' stock ones and change pixels like them; the
FOV augmentation (centre crop or whole frame) keeps focal length and target consistent with evaluation."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from dp_train.data.augment import AffineColorJitter, AugmentConfig, EvalTransform, LumaNoise, TrainTransform, make_view
from dp_train.shards import SampleMeta, make_sample


def photo(height: int = 48, width: int = 64) -> np.ndarray:
    """A colourful, non-saturated test image (smooth colour ramps plus texture)."""
    rng = np.random.default_rng(0)
    v, u = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([0.2 + 0.6 * u, 0.2 + 0.6 * v, 0.5 - 0.3 * u * v], axis=-1)
    return np.clip(255 * rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)


def both(stock: A.ImageOnlyTransform, fast: A.ImageOnlyTransform, image: np.ndarray, seed: int):
    """Outputs of the two transforms under the same random seed, as int arrays."""
    stock.set_random_seed(seed)
    fast.set_random_seed(seed)
    return stock(image=image)["image"].astype(int), fast(image=image)["image"].astype(int)


@pytest.mark.parametrize("factor", ["brightness", "contrast", "saturation"])
def test_affine_jitter_matches_albumentations_for_each_linear_factor(factor):
    settings = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0} | {factor: 0.4}
    for seed in range(4):
        stock, fast = both(A.ColorJitter(**settings, p=1), AffineColorJitter(**settings, p=1), photo(), seed)
        assert np.abs(stock - fast).max() <= 1, f"{factor}, seed {seed}"


def test_affine_hue_rotation_keeps_greys_and_approximates_the_hsv_shift():
    grey = np.repeat(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], 3, axis=2)
    jitter = AffineColorJitter(brightness=0, contrast=0, saturation=0, hue=0.2, p=1)
    np.testing.assert_allclose(jitter(image=grey)["image"], grey, atol=1)
    for seed in range(4):
        stock, fast = both(A.ColorJitter(brightness=0, contrast=0, saturation=0, hue=0.03, p=1),
                           AffineColorJitter(brightness=0, contrast=0, saturation=0, hue=0.03, p=1), photo(), seed)
        assert np.abs(stock - fast).mean() < 4


def test_full_affine_jitter_stays_close_to_albumentations():
    settings = dict(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=1)
    for seed in range(6):
        stock, fast = both(A.ColorJitter(**settings), AffineColorJitter(**settings), photo(), seed)
        assert np.abs(stock - fast).mean() < 6, seed


def test_luma_noise_equals_albumentations_shared_noise():
    image = photo()
    stock, fast = both(A.GaussNoise(std_range=(0.02, 0.04), per_channel=False, p=1),
                       LumaNoise(std_range=(0.02, 0.04), p=1), image, seed=3)
    assert np.abs(stock - fast).max() <= 1
    noise = fast - image.astype(int)
    assert (noise[..., 0] == noise[..., 1]).mean() > 0.95 and noise.std() > 3  # one map for all channels


@pytest.mark.parametrize("crop", [64, 20])
def test_colour_jitter_runs_before_or_after_the_resize_with_the_same_result(crop):
    """Where jitter runs (crop or output resolution, whichever is smaller) is an optimisation only."""
    sample = make_sample("s", photo(64, 64), np.full((64, 64), 3.0, np.float32),
                         SampleMeta(dataset="d", f_px=50.0, metric=True, synthetic=True))
    jitter = AffineColorJitter(p=1)

    def recolour(image: np.ndarray) -> np.ndarray:
        return jitter.apply(image, brightness=1.3, contrast=0.8, saturation=1.4, hue=0.05, order=[2, 0, 3, 1])

    size, box = 32, (0, 4, crop, crop)  # crop 64: larger than the output, jitter after; 20: smaller, before
    jittered = make_view(sample, size, box, flip=True, recolour=recolour).image.astype(int)
    plain = make_view(sample, size, box, flip=True).image
    assert np.abs(jittered - recolour(plain).astype(int)).mean() < 1.5
    assert np.abs(jittered - plain.astype(int)).mean() > 10


def column_sample(height: int = 48, width: int = 96, depth: float = 2.0, f_px: float = 60.0):
    """A constant-depth sample whose red channel is the column index (shows where a view comes from)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width, dtype=np.uint8)[None, :]
    return make_sample("cols", image, np.full((height, width), depth, np.float32),
                       SampleMeta(dataset="d", f_px=f_px, metric=True, synthetic=True))


STILL = dict(color_jitter_prob=0.0, blur_prob=0.0)


def test_the_fov_centre_crop_is_centred_keeps_the_aspect_and_its_focal_follows():
    """zoom 2 on 96 x 48: the centre 48 x 24 (columns 24-71) fills the input; f scales by size / 48."""
    sample, size = column_sample(), 32
    view = TrainTransform(size, AugmentConfig(center_crop_prob=1.0, zoom_range=(2.0, 2.0), **STILL))(sample, 0)
    assert view.f_px == pytest.approx(60.0 * size / 48)
    np.testing.assert_allclose(view.target, view.f_px / (size * 2.0), rtol=1e-6)  # D = f / (W C) still 2 m
    columns = view.image[0, :, 0].astype(int)
    assert abs(columns[0] - 24) <= 1 and abs(columns[-1] - 71) <= 1


def test_without_a_centre_crop_training_sees_exactly_what_evaluation_sees():
    """The other half of the FOV augmentation: the whole frame, resized anisotropically as `infer` does."""
    sample = column_sample()
    view = TrainTransform(32, AugmentConfig(center_crop_prob=0.0, **STILL))(sample, 0)
    reference = EvalTransform(32)(sample)
    assert view.f_px == reference.f_px
    np.testing.assert_array_equal(view.image, reference.image)
    np.testing.assert_array_equal(view.target, reference.target)


def test_half_of_the_samples_are_centre_cropped_by_default():
    """Tab. 16: centre crop probability 50 %. 400 draws: 4 binomial standard deviations = 0.1."""
    transform, sample = TrainTransform(32, AugmentConfig(**STILL)), column_sample()
    whole = EvalTransform(32)(sample).f_px
    cropped = [transform(sample, seed).f_px > whole * (1 + 1e-6) for seed in range(400)]
    assert abs(np.mean(cropped) - 0.5) < 0.1
