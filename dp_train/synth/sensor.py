"""The "real-world" look of the procedural world: a consumer camera and a stereo depth sensor.

The paper trains on real and synthetic data and its curriculum ablation (Tab. 13, 3A vs 3C) turns on
the difference: real images carry camera effects, real depth is noisy, holed and range limited, and
the objective treats the two kinds differently (trimmed MAE and no gradient loss on real samples).
`real_look` turns a rendered (synthetic) sample into such a real-like one, so that the same world
rendered two ways stands in for the two kinds of data (``tools/ablate.py``):

* image (a phone camera): exposure x0.6-1.6 and white balance +-10 % per channel in linear light,
  vignetting (corners 15-45 % darker), defocus blur (Gaussian, sigma 0.4-1.2 px), shot and read
  noise (about 3-8 grey levels at mid-grey), JPEG quality 35-75;
* depth (a stereo or structured-light sensor): range limit 10-40 m, noise growing with the square of
  depth (sigma 1-3 % at 10 m), holes on the far side of depth edges (occlusion, 1-3 px) and blobs
  of dropout (about 5-15 % of the image); no matting alpha;
* flags: metric, real (``synthetic=False``), dense (not ``sparse``: the holes are regions).

The ranges are ours (typical of consumer cameras and indoor/outdoor depth sensors), chosen so that
the two looks differ visibly; every draw comes from ``np.random.default_rng((seed, LOOK_STREAM))``,
so the same scene seed gives the same real-like sample.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dp_train.shards import Sample, SampleMeta

LOOK_STREAM = 0x4EA1
"""Second seed word of the real look's random stream (independent of the scene's own draws)."""
DATASET = "synth_real"
"""`SampleMeta.dataset` of real-like samples."""


def real_look(sample: Sample, seed: int) -> Sample:
    """The real-like version of a rendered sample: camera effects on the image, sensor effects on depth."""
    rng = np.random.default_rng((int(seed), LOOK_STREAM))
    image = camera_image(sample.image, rng)
    depth, valid = sensor_depth(sample.depth, sample.valid, rng)
    meta = SampleMeta(dataset=DATASET, f_px=sample.meta.f_px, metric=True, synthetic=False)
    return Sample(key=f"real-{int(seed):010d}", image=image, depth=depth, valid=valid, meta=meta)


def camera_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, vignetting, defocus, noise and JPEG, in a camera's order (uint8 in and out)."""
    h, w = image.shape[:2]
    linear = (image.astype(np.float32) / 255.0) ** 2.2
    gain = rng.uniform(0.6, 1.6) * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    falloff = 1.0 - rng.uniform(0.15, 0.45) * radius2
    linear = linear * gain * falloff[..., None]
    linear = cv2.GaussianBlur(linear, (0, 0), sigmaX=rng.uniform(0.4, 1.2))
    display = np.clip(linear, 0.0, 1.0) ** (1 / 2.2)
    shot, read = rng.uniform(2e-4, 1e-3), (2.0 / 255.0) ** 2
    display = display + rng.standard_normal(display.shape, dtype=np.float32) * np.sqrt(shot * display + read)
    out = np.clip(np.rint(display * 255.0), 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 76))])
    assert ok, "JPEG encoding of a uint8 image cannot fail"
    return cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)


def sensor_depth(depth: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Range limit, depth-squared noise, occlusion holes at depth edges and dropout blobs (depth, valid)."""
    keep = valid & (depth <= rng.uniform(10.0, 40.0))
    keep &= ~occlusion_holes(depth, valid, int(rng.integers(1, 4)))
    keep &= ~dropout_blobs(depth.shape, rng, coverage=rng.uniform(0.05, 0.15))
    sigma = rng.uniform(1e-3, 3e-3) * depth.astype(np.float64) ** 2  # 1-3 % at 10 m
    noisy = depth + rng.standard_normal(depth.shape) * sigma
    keep &= noisy > 0
    return np.where(keep, noisy, 0.0).astype(np.float32), keep


def occlusion_holes(depth: np.ndarray, valid: np.ndarray, width: int) -> np.ndarray:
    """Pixels on the far side of a horizontal depth edge (> 5 % jump), `width` px wide: what one camera
    of a stereo pair sees and the other does not. Sky next to an object counts as far."""
    far = np.where(valid, depth, np.inf)
    with np.errstate(invalid="ignore"):
        ratio = far[:, 1:] / far[:, :-1]
    right_far = ratio > 1.05  # the pixel right of the edge is the far one
    left_far = ratio < 1 / 1.05
    holes = np.zeros(depth.shape, dtype=bool)
    for shift in range(width):
        holes[:, 1 + shift:] |= right_far[:, : right_far.shape[1] - shift]
        holes[:, : holes.shape[1] - 1 - shift] |= left_far[:, shift:]
    return holes


def dropout_blobs(shape: tuple[int, int], rng: np.random.Generator, coverage: float) -> np.ndarray:
    """Smooth random blobs covering about `coverage` of the image (no return: dark, shiny or textureless)."""
    h, w = shape
    cells = max(2, round(math.sqrt(h * w) / 24))
    field = cv2.resize(rng.standard_normal((cells, cells)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return field > np.quantile(field, 1.0 - coverage)
