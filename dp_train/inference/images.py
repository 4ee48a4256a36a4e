"""Images for inference: read upright and at their bit depth, with the focal length their EXIF records."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dp_train.utils.exif import exif_focal_35mm

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""Pillow modes of integer grayscale images read as 16-bit (a 16-bit PNG or TIFF; `I` when 32-bit, whose values
must then fit 16 bits)."""


def load_image(path: Path) -> tuple[np.ndarray, float | None]:
    """Open `path` upright (EXIF orientation applied) as an H x W x 3 float32 array in [0, 1] (see `unit_rgb`);
    also return EXIF FocalLengthIn35mmFilm or None."""
    with Image.open(path) as img:
        img.load()
        focal_35mm = exif_focal_35mm(img)
        return unit_rgb(ImageOps.exif_transpose(img)), focal_35mm


def unit_rgb(img: Image.Image) -> np.ndarray:
    """The image as H x W x 3 float32 in [0, 1], read at its depth: 16-bit grayscale over 65535 (converting it to
    RGB would clip it to 255), float grayscale as it is when within [0, 1] (converting would black it out), the
    rest through Pillow's RGB (16-bit colour files arrive as their 8 high bits). Raises ValueError for pixel values
    that have no such reading."""
    if img.mode not in SIXTEEN_BIT_MODES + ("F",):
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    gray = np.asarray(img).astype(np.float32)
    low, high = (float(gray.min()), float(gray.max())) if gray.size else (0.0, 0.0)
    top = 1.0 if img.mode == "F" else 65535.0
    if not (math.isfinite(low) and math.isfinite(high) and low >= 0 and high <= top):
        raise ValueError(f"{img.mode} pixels span {low:g}..{high:g}, outside 0..{top:g}: convert the image to 8 or "
                         "16 bits")
    return np.repeat(gray[..., None] / top, 3, axis=2)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 array in [0, 1] -> (3, H, W) float32 tensor in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).contiguous() * 2.0 - 1.0
