"""Focal length in pixels from a photo's EXIF data (the focal-length benchmarks: DDDP, FiveK, PPR10K, RAISE,
SPAQ, ZOOM are photo folders whose ground truth is the camera's recorded focal length).

Convention (the same as `dp_train.predict`): the 35 mm-equivalent focal length `FocalLengthIn35mmFilm`
is converted by matching the image diagonal to the 36 x 24 mm film diagonal, so the result does not
depend on the aspect ratio or on an EXIF rotation. The paper does not say how its focal ground truth
was derived from EXIF (App. C.6 only says intrinsics come from EXIF).
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

__all__ = ["FULL_FRAME_DIAGONAL_MM", "exif_focal_px"]

EXIF_IFD = 0x8769
"""Pointer to the Exif sub-IFD, where cameras put `FocalLengthIn35mmFilm`."""
FOCAL_35MM_TAG = 0xA405
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


def exif_focal_px(path: Path) -> float | None:
    """The photo's focal length in pixels from its EXIF `FocalLengthIn35mmFilm`; None when absent or zero."""
    with Image.open(path) as img:
        exif = img.getexif()
        value = exif.get_ifd(EXIF_IFD).get(FOCAL_35MM_TAG, exif.get(FOCAL_35MM_TAG))
        width, height = img.size
    focal_35mm = float(value) if value else 0.0
    if not (math.isfinite(focal_35mm) and focal_35mm > 0):
        return None
    return focal_35mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
