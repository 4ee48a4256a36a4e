"""Focal length in pixels from a photo's EXIF tags: for `predict` (route 1) and for the converters of the FOV
stage's focal-only photo sets (Sec. 3.3, both routes).

Two routes, in this order:
1. FocalLengthIn35mmFilm: the focal length giving the same angle of view on a 36 x 24 mm frame.
   The angle it preserves is the diagonal one (CIPA DC-008), so f_px = f35 * image diagonal in pixels
   / 43.27 mm (the 36 x 24 mm diagonal). Phones and most cameras write it, crop factor included.
2. FocalLength (mm) with FocalPlaneXResolution (pixels per FocalPlaneResolutionUnit on the sensor):
   f_px = f_mm * pixels per mm, scaled by width / PixelXDimension when the image was resized after
   capture (PixelXDimension is the width the sensor resolution refers to).
Route 1 comes first: the focal-plane resolution is often written for the full sensor while the
image is a crop of it, and is missing on most phones. A photo with neither is not guessed at.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

EXIF_IFD = 0x8769
FOCAL_LENGTH, FOCAL_35MM = 0x920A, 0xA405
PIXEL_X_DIMENSION = 0xA002
FOCAL_PLANE_X_RESOLUTION, FOCAL_PLANE_RESOLUTION_UNIT = 0xA20E, 0xA210
MM_PER_UNIT = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
"""FocalPlaneResolutionUnit -> millimetres: 2 inch (the EXIF default), 3 cm, 4 mm, 5 micrometre."""
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


class NoFocal(ValueError):
    """The photo's EXIF gives no usable focal length (the message says what is missing)."""


def _positive(tags: dict, tag: int) -> float | None:
    """A tag's value as a positive finite float, else None (absent, zero, malformed)."""
    try:
        value = float(tags[tag])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def focal_35mm_to_px(focal_35mm: float, width: int, height: int) -> float:
    """Convert a 35 mm-equivalent focal length to pixels by matching the image and film diagonals (route 1)."""
    return focal_35mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM


def focal_px_from_tags(tags: dict, width: int, height: int) -> float:
    """Focal length in pixels of a `width` x `height` image from its EXIF tags (tag id -> value)."""
    f35 = _positive(tags, FOCAL_35MM)
    if f35 is not None:
        return focal_35mm_to_px(f35, width, height)
    f_mm, per_unit = _positive(tags, FOCAL_LENGTH), _positive(tags, FOCAL_PLANE_X_RESOLUTION)
    unit = MM_PER_UNIT.get(int(tags.get(FOCAL_PLANE_RESOLUTION_UNIT, 2) or 2))
    if f_mm is None or per_unit is None or unit is None:
        raise NoFocal("no usable EXIF focal length (FocalLengthIn35mmFilm, or FocalLength with "
                      "FocalPlaneXResolution and its unit)")
    sensor_width = _positive(tags, PIXEL_X_DIMENSION) or width
    return f_mm * per_unit / unit * width / sensor_width


def exif_tags(image: Image.Image) -> dict:
    """The base and Exif-IFD tags of an opened image, merged (tag id -> value)."""
    exif = image.getexif()
    return {**dict(exif), **dict(exif.get_ifd(EXIF_IFD))}


def exif_focal_35mm(image: Image.Image) -> float | None:
    """`FocalLengthIn35mmFilm` of an opened image (the Exif IFD's, else a misplaced IFD0 one); None when absent,
    zero or malformed."""
    return _positive(exif_tags(image), FOCAL_35MM)


def focal_px_from_exif(path: Path) -> float:
    """Focal length in pixels of the photo at `path`, from its EXIF; NoFocal when it has none usable."""
    with Image.open(path) as image:
        return focal_px_from_tags(exif_tags(image), image.width, image.height)
