"""File readers shared by the converters: depth maps (.npy, 16-bit .png, .pfm, .exr), images, validity
masks and focal-length files (CSV or JSON), plus the number checks they use.

A reader raises on a bad file; read_or_skip turns that into SkipSample naming the file, and a bad focal
file is a ConvertError (it concerns the whole run).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from dp_train.convert.errors import ConvertError, SkipSample
from dp_train.shards import load_png16

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEPTH_EXTS = (".npy", ".png", ".pfm", ".exr")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".npy")
EXR_CHANNELS = ("z", "depth", "y", "r")  # preferred depth channel names, in order


def read_pfm(path: str | Path) -> np.ndarray:
    """Read a PFM file: HxW float32 ("Pf") or HxWx3 ("PF"), top row first.

    Header: "PF"/"Pf", "width height", scale (negative = little-endian); rows are
    stored bottom to top.
    """
    with open(path, "rb") as f:
        kind = f.readline().strip()
        if kind not in (b"PF", b"Pf"):
            raise ValueError(f"not a PFM file (header {kind[:8]!r})")
        dims = f.readline().split()
        if len(dims) != 2:
            raise ValueError("bad PFM size line")
        width, height = int(dims[0]), int(dims[1])
        scale = float(f.readline().decode("ascii"))
        data = f.read()
    channels = 3 if kind == b"PF" else 1
    count = width * height * channels
    if len(data) < 4 * count:
        raise ValueError(f"truncated PFM: {len(data)} data bytes, expected {4 * count}")
    arr = np.frombuffer(data, "<f4" if scale < 0 else ">f4", count)
    arr = arr.reshape(height, width, channels)[::-1].astype(np.float32)
    return arr[..., 0] if channels == 1 else arr


def import_openexr() -> Any:
    """The OpenEXR module (>= 3.3, with OpenEXR.File), or ImportError saying how to get it."""
    try:
        import OpenEXR
    except ImportError:
        raise ImportError("reading .exr depth needs the OpenEXR package: pip install OpenEXR") from None
    if not hasattr(OpenEXR, "File"):
        raise ImportError("reading .exr depth needs OpenEXR >= 3.3: pip install -U OpenEXR")
    return OpenEXR


def read_exr(path: str | Path) -> np.ndarray:
    """Read the depth channel of an EXR file (the only channel, else Z, depth, Y or R)."""
    openexr = import_openexr()
    with openexr.File(str(path), separate_channels=True) as f:
        planes = {name: ch.pixels for name, ch in f.channels().items()}
    if len(planes) == 1:
        return next(iter(planes.values())).astype(np.float32)
    for wanted in EXR_CHANNELS:
        found = [n for n in planes if n.lower() == wanted or n.lower().endswith("." + wanted)]
        if len(found) == 1:
            return planes[found[0]].astype(np.float32)
    raise ValueError(f"cannot tell the depth channel among {sorted(planes)}")


def read_depth(path: Path, png_scale: float | None) -> np.ndarray:
    """Read a depth map in source units as float64 (.npy, 16-bit .png, .pfm or .exr)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"depth .npy has non-numeric dtype {arr.dtype}")
        return arr.astype(np.float64)
    if suffix == ".png":
        if png_scale is None:
            raise ValueError("16-bit PNG depth needs --png-scale")
        return load_png16(path.read_bytes()).astype(np.float64) * png_scale
    if suffix == ".pfm":
        return read_pfm(path).astype(np.float64)
    if suffix == ".exr":
        return read_exr(path).astype(np.float64)
    raise ValueError(f"unsupported depth file type {suffix}")


def read_image(path: Path) -> np.ndarray:
    """Read an 8-bit image as HxWx3 uint8 RGB (EXIF orientation is ignored, like the depth)."""
    with Image.open(path) as img:
        if img.mode.startswith(("I", "F")):
            raise ValueError(f"image mode {img.mode} (16-bit/float) is not supported; use 8-bit RGB")
        return np.array(img.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    """Read a validity mask (.npy or image) as bool: nonzero = valid."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False) != 0
    with Image.open(path) as img:
        return np.array(img.convert("L")) != 0


FOCAL_COLUMNS = ("f_px", "focal", "focal_px", "focal_length", "fx")
"""Names (any case) that make a focal CSV's first row a header: a header is recognised by its focal column's
name, not by that column failing to parse, so a first row with a misspelt number is an error, not skipped."""


def read_focal_file(path: Path) -> dict[str, float]:
    """Read stem -> f_px from a JSON object or a CSV of `stem,f_px` rows (optional header, FOCAL_COLUMNS)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"cannot read focal file {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        if path.suffix.lower() == ".json":
            table = json.loads(text)
            if not isinstance(table, dict):
                raise ValueError("expected a JSON object {stem: f_px}")
            focal = {str(stem): positive_number(value, f"f_px of {stem!r}") for stem, value in table.items()}
        else:
            focal = read_focal_csv(text)
    except ValueError as e:
        raise ConvertError(f"cannot read focal file {path}: {e}") from None
    if not focal:
        raise ConvertError(f"focal file {path} lists no focal lengths")
    return focal


def read_focal_csv(text: str) -> dict[str, float]:
    """stem -> f_px from `stem,f_px` rows; a bad row is a ValueError naming its line and column."""
    focal = {}
    first = True
    reader = csv.reader(text.splitlines())
    for row in reader:
        if not row or not row[0].strip():
            continue
        header, first = first and len(row) > 1 and row[1].strip().lower() in FOCAL_COLUMNS, False
        if header:
            continue
        if len(row) < 2:
            raise ValueError(f"row {reader.line_num}: every CSV row needs two columns: stem,f_px")
        stem = row[0].strip()
        focal[stem] = positive_number(row[1], f"row {reader.line_num}, column 2 (f_px of {stem!r})")
    return focal


def is_number(text: str) -> bool:
    """True if text parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def positive_number(value: Any, what: str) -> float:
    """value as a positive finite float, else ValueError naming `what`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{what} must be positive, got {value!r}")
    return number


def read_or_skip(path: Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
    """reader(path), turning any failure into SkipSample naming the file."""
    try:
        return reader(path)
    except Exception as e:
        raise SkipSample(f"cannot read {path.name}: {e}") from None
