"""A `Sample` to the members of a webdataset record (image, depth in its stored format, mask, alpha, json)."""

from __future__ import annotations

import io
import json
import math
import warnings
from typing import Any

import numpy as np
from PIL import Image

from dp_train.shards.sample import DEPTH_FORMATS, IMAGE_FORMATS, PNG16_MAX, SCHEMA_VERSION, Sample, SampleError

JPEG_QUALITY = 95
FLOAT16_MAX = 65504.0
FLOAT16_MIN_NORMAL = 2.0**-14


def encode_sample(
    sample: Sample,
    depth_format: str = "npy16",
    image_format: str = "jpg",
    png_scale: float | None = None,
) -> dict[str, bytes | str]:
    """Encode a Sample as a webdataset dict of bytes (plus the str "__key__").

    `png_scale` (depth units per PNG count) applies to depth_format "png16"; None picks
    the finest scale of the form {1,2,5}e-k that fits the depth range. Raises SampleError
    when the sample is malformed or its depth does not fit the format.
    """
    sample.validate()
    check_choice("depth_format", depth_format, DEPTH_FORMATS)
    check_choice("image_format", image_format, IMAGE_FORMATS)
    depth = sample.depth.astype(np.float32)
    positive = np.isfinite(depth) & (depth > 0)
    depth[~positive] = 0
    valid = sample.valid & positive
    h, w = depth.shape
    info: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, **sample.meta.to_json(),
        "depth_format": depth_format, "width": w, "height": h,
    }
    raw: dict[str, bytes | str] = {"__key__": sample.key, image_format: _image_bytes(sample.image, image_format)}
    if sample.meta.has_depth:
        try:
            depth_member, depth_bytes = _encode_depth(depth, depth_format, png_scale, info)
        except ValueError as e:
            raise SampleError(f"{sample.key}: {e}") from None
        raw[depth_member] = depth_bytes
    elif valid.any():
        raise SampleError(f"{sample.key}: depth_kind 'none' (written without depth) but the depth map has "
                          f"{int(valid.sum())} valid pixel(s)")
    raw["json"] = json.dumps(info, sort_keys=True).encode()
    if np.any(positive & ~valid):
        raw["mask.png"] = _png_bytes(valid.astype(np.uint8) * 255)
    if sample.alpha is not None:
        raw["alpha.png"] = _png_bytes(np.rint(sample.alpha * 255).astype(np.uint8))
    return raw


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError unless value is one of choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _encode_depth(
    depth: np.ndarray, depth_format: str, png_scale: float | None, info: dict[str, Any]
) -> tuple[str, bytes]:
    """Encode depth (0 where invalid) as (member name, bytes); png16 adds its scale to info."""
    if depth_format == "png16":
        scale = png_scale if png_scale is not None else auto_png_scale(float(depth.max(initial=0)))
        info["depth_png_scale"] = scale
        return "depth.png", _png_bytes(quantize_png16(depth, scale))
    if depth_format == "npy16":
        depth = to_float16(depth)
    buf = io.BytesIO()
    np.save(buf, depth, allow_pickle=False)
    return "depth.npy", buf.getvalue()


def to_float16(depth: np.ndarray) -> np.ndarray:
    """Cast depth (>= 0) to float16, refusing values above 65504 and keeping positive
    values positive; warns when values fall below float16's normal range."""
    d_max = float(depth.max(initial=0))
    if d_max > FLOAT16_MAX:
        raise ValueError(
            f"depth max {d_max:g} exceeds the float16 range ({FLOAT16_MAX:g}); "
            "use depth_format 'npy32' or 'png16'"
        )
    positive = depth > 0
    n_tiny = int(np.count_nonzero(positive & (depth < FLOAT16_MIN_NORMAL)))
    if n_tiny:
        warnings.warn(
            f"{n_tiny} depth values below {FLOAT16_MIN_NORMAL:.3g} lose float16 precision; "
            "use depth_format 'npy32' (or rescale relative depth)",
            stacklevel=3,
        )
    d16 = depth.astype(np.float16)
    d16[positive & (d16 == 0)] = np.float16(2.0**-24)
    return d16


def auto_png_scale(max_depth: float) -> float:
    """The finest scale s in {1,2,5}x10^k with max_depth / s <= 65535 (1e-3 if max_depth <= 0)."""
    if max_depth <= 0:
        return 1e-3
    needed = max_depth / PNG16_MAX
    exp = math.floor(math.log10(needed))
    for e in (exp, exp + 1):
        for m in (1, 2, 5):
            scale = float(f"{m}e{e}")
            if scale >= needed:
                return scale
    raise AssertionError("unreachable: 1e(exp+1) >= needed")


def quantize_png16(depth: np.ndarray, scale: float) -> np.ndarray:
    """Depth (0 where invalid) -> uint16 counts of `scale`; positive depth stays >= 1."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"depth_png_scale must be positive, got {scale!r}")
    q = np.rint(depth.astype(np.float64) / scale)
    if q.max(initial=0) > PNG16_MAX:
        raise ValueError(
            f"depth max {float(depth.max()):g} does not fit 16 bits at depth_png_scale {scale:g}"
        )
    q[(depth > 0) & (q < 1)] = 1
    return q.astype(np.uint16)


def _image_bytes(image: np.ndarray, image_format: str) -> bytes:
    """Encode an HxWx3 uint8 RGB image as JPEG (quality 95) or lossless PNG."""
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if image_format == "jpg":
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        pil.save(buf, format="PNG")
    return buf.getvalue()


def _png_bytes(plane: np.ndarray) -> bytes:
    """Encode a 2-D uint8 (8-bit) or uint16 (16-bit) array as a grayscale PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane)).save(buf, format="PNG")
    return buf.getvalue()
