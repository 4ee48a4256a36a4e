"""Augmentation that keeps depth metric, and the canonical inverse depth target.

Geometry (random square crop, resize to the network input, horizontal flip)
updates the focal length with every resize; depth and masks are resampled with
nearest neighbour so they are never blurred across boundaries. Photometric
augmentation (colour jitter, blur, noise, JPEG artefacts) goes through
albumentations and touches the image only. The target is computed after
augmentation: canonical inverse depth `C = f_px / (W * D)`, `W` the network
input width, so that `D = f_px / (W * C)` holds for the augmented image.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

from dp_train.data.schema import Sample


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (probabilities are per sample)."""

    zoom_range: tuple[float, float] = (1.0, 1.5)
    """Crop side = short image side / zoom; zoom >= 1 keeps the crop inside the image."""
    flip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    blur_prob: float = 0.1
    noise_prob: float = 0.1
    jpeg_prob: float = 0.2

    def __post_init__(self) -> None:
        low, high = self.zoom_range
        if not 1.0 <= low <= high:
            raise ValueError(f"zoom_range={self.zoom_range} must satisfy 1 <= low <= high")


@dataclass
class View:
    """One sample at network resolution, ready to collate."""

    image: np.ndarray  # S x S x 3 uint8
    target: np.ndarray  # S x S float32 canonical inverse depth (metric) or inverse-depth-like (relative); 0 invalid
    valid: np.ndarray  # S x S bool
    f_px: float  # focal length of the view in pixels (0 when unknown)
    alpha: np.ndarray | None  # S x S float32 or None


def resize(array: np.ndarray, width: int, height: int, nearest: bool) -> np.ndarray:
    """Resize with OpenCV: nearest for depth/masks, area (shrink) or bilinear (enlarge) for images."""
    if array.shape[1] == width and array.shape[0] == height:
        return array
    if nearest:
        mode = cv2.INTER_NEAREST
    else:
        mode = cv2.INTER_AREA if width < array.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=mode)


def inverse_depth_target(depth: np.ndarray, valid: np.ndarray, f_px: float, width: int, sample: Sample) -> np.ndarray:
    """Target on the network grid: `f_px / (W * D)` for metric samples, inverse depth (or disparity) for relative."""
    target = np.zeros_like(depth, dtype=np.float32)
    if sample.meta.depth_kind == "disparity":
        np.copyto(target, depth, where=valid)
    elif sample.meta.metric:
        np.divide(f_px, width * depth, out=target, where=valid)
    else:
        np.divide(1.0, depth, out=target, where=valid)
    return target


def make_view(sample: Sample, size: int, box: tuple[int, int, int, int], flip: bool) -> View:
    """Crop `box` = (top, left, height, width) from the sample, resize to `size` x `size`, optionally flip.

    The horizontal focal length scales with the horizontal resize factor; the
    crop offset only moves the principal point, which the model ignores.
    """
    top, left, height, width = box
    window = (slice(top, top + height), slice(left, left + width))
    image = _flipped(resize(sample.image[window], size, size, nearest=False), flip)
    depth = _flipped(resize(sample.depth[window], size, size, nearest=True), flip)
    valid = _flipped(resize(sample.valid[window].view(np.uint8), size, size, nearest=True), flip).astype(bool)
    alpha = None if sample.alpha is None else _flipped(resize(sample.alpha[window], size, size, nearest=False), flip)
    f_px = (sample.meta.f_px or 0.0) * size / width
    target = inverse_depth_target(depth, valid, f_px, size, sample)
    contiguous = np.ascontiguousarray
    return View(contiguous(image), target, valid, f_px, None if alpha is None else contiguous(alpha))


def _flipped(array: np.ndarray, flip: bool) -> np.ndarray:
    """The array mirrored left-right (a new contiguous array; OpenCV copies ~10x faster than numpy's
    negative-stride copy of HxWx3 uint8), or the array itself."""
    return cv2.flip(array, 1) if flip else array


def photometric(cfg: AugmentConfig) -> A.Compose:
    """Image-only photometric augmentation: colour jitter, blur, sensor noise, JPEG artefacts."""
    return A.Compose(
        [
            A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=cfg.color_jitter_prob),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=cfg.blur_prob),
            A.GaussNoise(std_range=(0.01, 0.04), per_channel=False, p=cfg.noise_prob),  # luma noise: 3x cheaper
            A.ImageCompression(quality_range=(40, 90), p=cfg.jpeg_prob),
        ]
    )


class TrainTransform:
    """Random crop/zoom, flip and photometric augmentation; deterministic given the per-sample seed."""

    def __init__(self, size: int, cfg: AugmentConfig | None = None) -> None:
        self.size = size
        self.cfg = cfg or AugmentConfig()
        self.photometric = photometric(self.cfg)

    def __call__(self, sample: Sample, seed: int) -> View:
        """Augment one sample; `seed` makes the draw reproducible (and resumable) per sample."""
        rng = np.random.default_rng(seed)
        height, width = sample.depth.shape
        side = max(1, int(round(min(height, width) / rng.uniform(*self.cfg.zoom_range))))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        view = make_view(sample, self.size, (top, left, side, side), flip=bool(rng.random() < self.cfg.flip_prob))
        self.photometric.set_random_seed(int(rng.integers(2**31)))
        view.image = self.photometric(image=view.image)["image"]
        return view


class EvalTransform:
    """Deterministic resize of the whole image to the network input (as Depth Pro's `infer` does)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: Sample, seed: int = 0) -> View:
        """Resize without augmentation; `seed` is accepted for interface symmetry and ignored."""
        height, width = sample.depth.shape
        return make_view(sample, self.size, (0, 0, height, width), flip=False)
