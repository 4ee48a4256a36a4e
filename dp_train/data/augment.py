"""Augmentation that keeps depth metric, and the canonical inverse depth target.

Geometry updates the focal length with every resize. The paper's (App. C.4,
Tab. 16) is the FOV augmentation: with `center_crop_prob` (paper: 50 %) a
centre crop of the image's own aspect ratio (side / zoom), otherwise the whole
frame; either is then resized to the square network input anisotropically, as
`infer` and evaluation resize every image, so training and test geometry agree.
A random-position square crop (`crop: random_square`) and a horizontal flip
stay available (off in the paper recipes); depth and masks are resampled with
nearest neighbour so they are never blurred across boundaries. Photometric
augmentation (colour jitter, blur, noise, JPEG artefacts) goes through
albumentations and touches the image only. The target is canonical inverse
depth `C = f_px / (W * D)` of the augmented view, `W` the network input width,
so that `D = f_px / (W * C)` holds for the augmented image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import albumentations as A
import cv2
import numpy as np

from dp_train.shards import Sample


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (probabilities are per sample). Defaults are the paper's (Tab. 16)
    where it gives one; flip, noise and JPEG are not in the paper and default to off."""

    crop: Literal["fov", "random_square"] = "fov"
    """"fov": the paper's FOV augmentation (centre crop with `center_crop_prob`, else the whole frame);
    "random_square": a square crop at a random position, side = short image side / zoom."""
    center_crop_prob: float = 0.5
    """Share of samples centre-cropped in "fov" mode (paper: 50 %); the rest keep the whole frame."""
    zoom_range: tuple[float, float] = (1.0, 1.5)
    """Crop side = image side / zoom, zoom drawn uniformly; zoom >= 1 keeps the crop inside the image.
    The paper gives no crop size for its centre crop: this range is ours."""
    flip_prob: float = 0.0
    color_jitter_prob: float = 0.75
    """Paper: random colour change 75 % (it gives no magnitudes; ours: brightness, contrast, saturation
    0.25, hue 0.03)."""
    blur_prob: float = 0.3
    """Paper: random blur 30 % (kernel ours: Gaussian 3-5 px or motion 3-7 px)."""
    noise_prob: float = 0.0
    jpeg_prob: float = 0.0

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
    """Target on a `width` pixels wide grid: `f_px / (width * D)` for metric samples, inverse depth (or
    disparity) for relative ones; 0 where invalid, positive where valid."""
    target = np.zeros_like(depth, dtype=np.float32)
    if sample.meta.depth_kind == "disparity":
        np.copyto(target, depth, where=valid)
    elif sample.meta.metric:
        np.divide(f_px, width * depth, out=target, where=valid)
    else:
        np.divide(1.0, depth, out=target, where=valid)
    return target


Recolour = Callable[[np.ndarray], np.ndarray]


def make_view(
    sample: Sample, size: int, box: tuple[int, int, int, int], flip: bool, recolour: Recolour | None = None
) -> View:
    """Crop `box` = (top, left, height, width) from the sample, resize to `size` x `size`, optionally flip.

    The horizontal focal length scales with the horizontal resize factor; the crop offset
    only moves the principal point, which the model ignores. The canonical target
    `f_px / (W * D)` is unchanged by resizing and flipping, so it is computed on the crop
    and resampled with nearest neighbour; validity is `target > 0` after resampling.
    `recolour`, a per-pixel colour transform, runs at the lower of the crop and output
    resolutions: it commutes with resampling, so the result is the same at less cost.
    """
    top, left, height, width = box
    window = (slice(top, top + height), slice(left, left + width))
    source_f_px = sample.meta.f_px or 0.0
    crop_target = inverse_depth_target(sample.depth[window], sample.valid[window], source_f_px, width, sample)
    target = _flipped(resize(crop_target, size, size, nearest=True), flip)
    image = sample.image[window]
    recolour_first = recolour is not None and height * width <= size * size
    image = recolour(np.ascontiguousarray(image)) if recolour_first else image
    image = _flipped(resize(image, size, size, nearest=False), flip)
    if recolour is not None and not recolour_first:
        image = recolour(image)
    alpha = None if sample.alpha is None else _flipped(resize(sample.alpha[window], size, size, nearest=False), flip)
    contiguous = np.ascontiguousarray
    f_px = source_f_px * size / width
    return View(contiguous(image), target, target > 0, f_px, None if alpha is None else contiguous(alpha))


def _flipped(array: np.ndarray, flip: bool) -> np.ndarray:
    """The array mirrored left-right (a new contiguous array; OpenCV copies ~10x faster than numpy's
    negative-stride copy of HxWx3 uint8), or the array itself."""
    return cv2.flip(array, 1) if flip else array


GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as OpenCV's RGB -> grey


class AffineColorJitter(A.ColorJitter):
    """albumentations' ColorJitter (same parameters, same random draws) applied as one affine colour map.

    Brightness, contrast, saturation and hue are each affine in RGB (hue as a rotation about
    the grey axis, the linear approximation of an HSV hue shift), so the four in their drawn
    order compose to one 3x4 matrix that `cv2.transform` applies in one pass: measured 13x
    faster than ColorJitter's four passes and HSV round trip at 1536 px, with 1-5 grey levels
    mean difference (the hue approximation and a single final clip).
    """

    def apply(self, img: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float,
              order: list[int], **params) -> np.ndarray:
        """The jittered image; `order` lists the steps (0 brightness, 1 contrast, 2 saturation, 3 hue)."""
        mean = np.append(cv2.mean(img)[:3], 1.0)  # the contrast step pivots on the current mean grey
        identity, to_grey = np.eye(3), np.outer(np.ones(3), GREY_WEIGHTS)
        matrix = np.eye(4)
        for step in order:
            if step == 0:
                update = _affine(brightness * identity)
            elif step == 1:
                update = _affine(contrast * identity, (1 - contrast) * GREY_WEIGHTS @ (matrix @ mean)[:3])
            elif step == 2:
                update = _affine(saturation * identity + (1 - saturation) * to_grey)
            else:
                update = _affine(_grey_axis_rotation(2 * np.pi * hue))
            matrix = update @ matrix
        return cv2.transform(img, matrix[:3])


def _affine(linear: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """4x4 homogeneous matrix of the RGB map `x -> linear @ x + offset` (offset the same for R, G, B)."""
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = linear, offset
    return matrix


def _grey_axis_rotation(angle: float) -> np.ndarray:
    """3x3 rotation of RGB space by `angle` radians about the grey axis (Rodrigues' formula)."""
    axis = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(axis, axis)


class LumaNoise(A.GaussNoise):
    """albumentations' GaussNoise with one noise map for all channels, added in one OpenCV pass
    (albucore broadcasts and converts the map first: measured 2.5x slower at 1536 px)."""

    def __init__(self, std_range: tuple[float, float], p: float) -> None:
        super().__init__(std_range=std_range, per_channel=False, p=p)

    def apply(self, img: np.ndarray, noise_map: np.ndarray, **params) -> np.ndarray:
        """The image plus the noise map (in grey levels), saturated to uint8."""
        noise = (noise_map[..., 0] if noise_map.ndim == 3 else noise_map).astype(np.float32, copy=False)
        return cv2.add(img, cv2.merge([noise] * img.shape[2]), dtype=cv2.CV_8U)


def colour_jitter(cfg: AugmentConfig) -> A.Compose:
    """Per-pixel colour augmentation (brightness, contrast, saturation, hue)."""
    jitter = AffineColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=cfg.color_jitter_prob)
    return A.Compose([jitter])


def degradation(cfg: AugmentConfig) -> A.Compose:
    """Sensor-like degradation at network resolution: blur, noise, JPEG artefacts."""
    return A.Compose(
        [
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=cfg.blur_prob),
            LumaNoise(std_range=(0.01, 0.04), p=cfg.noise_prob),
            A.ImageCompression(quality_range=(40, 90), p=cfg.jpeg_prob),
        ]
    )


class TrainTransform:
    """FOV augmentation (or random square crop), flip and photometric augmentation; deterministic given
    the per-sample seed."""

    def __init__(self, size: int, cfg: AugmentConfig | None = None) -> None:
        self.size = size
        self.cfg = cfg or AugmentConfig()
        self.colour_jitter = colour_jitter(self.cfg)
        self.degradation = degradation(self.cfg)

    def __call__(self, sample: Sample, seed: int) -> View:
        """Augment one sample; `seed` makes the draw reproducible (and resumable) per sample."""
        rng = np.random.default_rng(seed)
        box = self.crop_box(rng, *sample.depth.shape)
        flip = bool(rng.random() < self.cfg.flip_prob)
        photometric_seed = int(rng.integers(2**31))
        self.colour_jitter.set_random_seed(photometric_seed)
        self.degradation.set_random_seed(photometric_seed + 1)
        view = make_view(sample, self.size, box, flip, self.recolour)
        view.image = self.degradation(image=view.image)["image"]
        return view

    def crop_box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the region that becomes the view."""
        zoom = rng.uniform(*self.cfg.zoom_range)
        if self.cfg.crop == "random_square":
            side = max(1, int(round(min(height, width) / zoom)))
            return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side, side
        if rng.random() >= self.cfg.center_crop_prob:
            return 0, 0, height, width
        crop_height, crop_width = max(1, int(round(height / zoom))), max(1, int(round(width / zoom)))
        return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width

    def recolour(self, image: np.ndarray) -> np.ndarray:
        """The colour-jittered image (see `make_view` for where it runs)."""
        return self.colour_jitter(image=image)["image"]


class EvalTransform:
    """Deterministic resize of the whole image to the network input (as Depth Pro's `infer` does)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: Sample, seed: int = 0) -> View:
        """Resize without augmentation; `seed` is accepted for interface symmetry and ignored."""
        height, width = sample.depth.shape
        return make_view(sample, self.size, (0, 0, height, width), flip=False)
