"""Colour-mapped pictures of depth for people: predict outputs, logged validation panels, README examples."""

from __future__ import annotations

import numpy as np

# Anchor colours of a turbo-like perceptual map, dark blue (far) -> dark red (near).
_COLORMAP_ANCHORS = np.array(
    [
        [48, 18, 59],
        [67, 97, 223],
        [41, 170, 240],
        [36, 226, 172],
        [126, 254, 85],
        [213, 226, 53],
        [253, 158, 42],
        [225, 69, 11],
        [122, 4, 3],
    ],
    dtype=np.float64,
)

def colormap_lut(n: int = 256) -> np.ndarray:
    """An (n, 3) uint8 lookup table interpolating the colormap anchors."""
    anchors = np.linspace(0.0, 1.0, len(_COLORMAP_ANCHORS))
    t = np.linspace(0.0, 1.0, n)
    channels = [np.interp(t, anchors, _COLORMAP_ANCHORS[:, c]) for c in range(3)]
    return np.clip(np.round(np.stack(channels, axis=1)), 0, 255).astype(np.uint8)


_LUT = colormap_lut()


def colorize_inverse_depth(depth: np.ndarray, low_pct: float = 2.0, high_pct: float = 98.0) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 image of inverse depth, normalised between robust percentiles."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(np.isfinite(depth) & (depth > 0), 1.0 / depth, np.nan)
    valid = inverse[np.isfinite(inverse)]
    if valid.size == 0:
        return np.zeros((*depth.shape, 3), dtype=np.uint8)
    low, high = np.percentile(valid, [low_pct, high_pct])
    scaled = (inverse - low) / max(high - low, 1e-12)
    index = np.round(np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0) * (len(_LUT) - 1)).astype(np.intp)
    return _LUT[index]


def colorize(values: np.ndarray, valid: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) values -> (H, W, 3) uint8 through the colormap between `low` and `high`; invalid pixels black."""
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    index = np.round(np.nan_to_num(scaled, nan=0.0) * (len(_LUT) - 1)).astype(np.intp)
    return np.where(valid[..., None], _LUT[index], 0).astype(np.uint8)


def depth_panel(image: np.ndarray, target: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """One row RGB | ground truth | prediction | absolute error, for inverse-depth-like maps.

    GT and prediction share the GT's robust colour range so they compare at a
    glance; the error is scaled to its own 98th percentile.
    """
    shown = target[valid] if valid.any() else pred.ravel()
    low, high = np.percentile(shown, [2, 98])
    error = np.abs(pred - target)
    error_high = float(np.percentile(error[valid], 98)) if valid.any() else 1.0
    everywhere = np.ones_like(valid)
    return np.concatenate(
        [
            image,
            colorize(target, valid, low, high),
            colorize(pred, everywhere, low, high),
            colorize(error, valid, 0.0, error_high),
        ],
        axis=1,
    )
