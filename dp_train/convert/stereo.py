"""Readers for the stereo and optical-flow benchmark suites: Middlebury 2014 (disparity + calib.txt),
MPI Sintel (rendered depth, .dpt / .cam) and KITTI annotated depth (projected LiDAR, sparse). Depth in metres.

The `find_<format>` / `load_<format>` contract: dp_train/convert/formats.py; layouts: docs/convert.md.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dp_train.convert.errors import SkipSample
from dp_train.convert.formats import Item, Loaded, Skipped, first_missing, require_dir, skip_group
from dp_train.convert.readers import positive_number, read_depth, read_image, read_or_skip, read_pfm
from dp_train.shards import sanitize_key

# ----------------------------------------------------------------------------- Middlebury 2014


@dataclass(frozen=True)
class MiddleburyCalib:
    """The calib.txt fields the conversion needs (lengths in pixels, baseline in mm)."""

    f: float
    doffs: float
    baseline_mm: float
    width: int
    height: int


def _matrix(text: str, rows: int, cols: int) -> np.ndarray:
    """Parse a MATLAB-style matrix "[a b c; d e f; ...]"."""
    body = text.strip().removeprefix("[").removesuffix("]")
    values = [[float(v) for v in row.split()] for row in body.split(";")]
    if len(values) != rows or any(len(r) != cols for r in values):
        raise ValueError(f"expected a {rows}x{cols} matrix, got {text!r}")
    return np.array(values)


def read_middlebury_calib(path: Path) -> MiddleburyCalib:
    """Read a Middlebury 2014 calib.txt.

    Spec (vision.middlebury.edu/stereo/data/scenes2014, "calibration files"): one `name=value`
    per line; cam0=[f 0 cx0; 0 f cy; 0 0 1] is the left camera (f in pixels), doffs the x
    difference of the principal points (cx1 - cx0), baseline the camera distance in mm,
    width/height the image size. Focal length in pixels: f = cam0[0, 0].
    """
    fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    missing = [k for k in ("cam0", "doffs", "baseline", "width", "height") if k not in fields]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return MiddleburyCalib(
        f=positive_number(_matrix(fields["cam0"], 3, 3)[0, 0], "cam0 focal length"),
        doffs=float(fields["doffs"]),
        baseline_mm=positive_number(fields["baseline"], "baseline"),
        width=int(fields["width"]),
        height=int(fields["height"]),
    )


def middlebury_depth(disparity: np.ndarray, calib: MiddleburyCalib) -> np.ndarray:
    """Depth in metres from Middlebury disparity: Z = baseline * f / (d + doffs), mm -> m.

    Unknown disparities are inf in disp0.pfm; they (and d + doffs <= 0) become NaN = invalid.
    """
    shifted = disparity.astype(np.float64) + calib.doffs
    depth = np.full(shifted.shape, np.nan)
    ok = np.isfinite(shifted) & (shifted > 0)
    depth[ok] = calib.baseline_mm * calib.f / shifted[ok] / 1000.0
    return depth


def load_middlebury(folder: Path) -> Loaded:
    """One Middlebury 2014 scene folder: the left image im0.png, its disparity disp0.pfm
    converted to metric depth, f_px from calib.txt."""
    calib = read_or_skip(folder / "calib.txt", read_middlebury_calib)
    image = read_or_skip(folder / "im0.png", read_image)
    disparity = read_or_skip(folder / "disp0.pfm", read_pfm)
    h, w = image.shape[:2]
    if (calib.width, calib.height) != (w, h):
        raise SkipSample(f"calib.txt says {calib.width}x{calib.height} but im0.png is {w}x{h}")
    return Loaded(image, middlebury_depth(disparity, calib), calib.f)


def find_middlebury(root: Path) -> tuple[list[Item], Skipped]:
    """Middlebury 2014 stereo scenes: root/<scene>/{im0.png, disp0.pfm, calib.txt} (left view).

    Spec: vision.middlebury.edu/stereo/data/scenes2014 ("file formats"). disp0.pfm holds the
    left view's disparity in pixels, inf where unknown (-> invalid); depth in mm is
    baseline * f / (d + doffs) with calib.txt's baseline (mm), f = cam0[0, 0] (pixels, the
    f_px stored) and doffs; stored in metres. A folder with only some of the files is skipped.
    """
    names = ("im0.png", "disp0.pfm", "calib.txt")
    items: list[Item] = []
    skipped: Skipped = []
    for folder in sorted(p for p in require_dir(root, "--root").iterdir() if p.is_dir()):
        if not any((folder / n).is_file() for n in names):
            continue
        reason = first_missing([folder / n for n in names])
        if reason:
            skipped.append((folder.name, reason))
        else:
            items.append(Item(sanitize_key(folder.name), partial(load_middlebury, folder)))
    return items, skipped


# ----------------------------------------------------------------------------- MPI Sintel

SINTEL_TAG = 202021.25


def _sintel_payload(path: Path, header: str, what: str) -> tuple[tuple[Any, ...], bytes]:
    """Check the leading float32 tag of a Sintel file; returns (header fields, remaining bytes)."""
    data = path.read_bytes()
    size = struct.calcsize(header)
    if len(data) < size:
        raise ValueError(f"truncated {what} header ({len(data)} bytes)")
    tag, *fields = struct.unpack(header, data[:size])
    if tag != SINTEL_TAG:
        raise ValueError(f"tag {tag!r} is not {SINTEL_TAG}: not a Sintel {what} file")
    return tuple(fields), data[size:]


def read_dpt(path: Path) -> np.ndarray:
    """Read a Sintel .dpt depth file as HxW float32.

    Spec (MPI Sintel depth SDK, sintel_io.py depth_read): float32 tag 202021.25, int32 width,
    int32 height, then width*height float32 depth values, row-major, little-endian.
    """
    (width, height), data = _sintel_payload(path, "<fii", ".dpt")
    if not (0 < width < 100_000 and 0 < height < 100_000):
        raise ValueError(f"implausible size {width}x{height}")
    if len(data) != 4 * width * height:
        raise ValueError(f"{len(data)} data bytes, expected {4 * width * height} for {width}x{height}")
    return np.frombuffer(data, "<f4").reshape(height, width)


def read_sintel_cam(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a Sintel .cam file: (M 3x3 intrinsics, N 3x4 extrinsics).

    Spec (MPI Sintel depth SDK, sintel_io.py cam_read): float32 tag 202021.25, then M as 9
    float64 and N as 12 float64, row-major, little-endian. Focal length in pixels: M[0, 0].
    """
    _, data = _sintel_payload(path, "<f", ".cam")
    if len(data) != 8 * 21:
        raise ValueError(f"{len(data)} data bytes, expected {8 * 21} (3x3 + 3x4 float64)")
    values = np.frombuffer(data, "<f8")
    return values[:9].reshape(3, 3), values[9:].reshape(3, 4)


def load_sintel(image: Path, depth: Path, cam: Path) -> Loaded:
    """One Sintel frame: rendered image, .dpt depth, f_px = M[0, 0] of the .cam file."""
    intrinsics, _ = read_or_skip(cam, read_sintel_cam)
    f_px = float(intrinsics[0, 0])
    if not (math.isfinite(f_px) and f_px > 0):
        raise SkipSample(f"{cam.name}: focal length M[0,0] = {f_px} is not positive")
    return Loaded(read_or_skip(image, read_image), read_or_skip(depth, read_dpt), f_px)


def find_sintel(root: Path, render_pass: str = "final") -> tuple[list[Item], Skipped]:
    """MPI Sintel frames under root (the training/ folder of the depth and complete downloads
    merged): depth/<scene>/frame_XXXX.dpt, camdata_left/<scene>/frame_XXXX.cam and the image
    <render_pass>/<scene>/frame_XXXX.png (final or clean).

    Spec: sintel.is.tue.mpg.de/depth and the depth SDK's sintel_io.py (read_dpt and
    read_sintel_cam here). Depth is rendered z-depth in scene units, taken as metres; the
    format has no invalid marker, non-finite or <= 0 values would be invalid. f_px = M[0, 0].
    """
    depth_root = require_dir(root / "depth", "Sintel depth folder")
    items: list[Item] = []
    skipped: Skipped = []
    for depth in sorted(depth_root.glob("*/*.dpt")):
        scene = depth.parent.name
        key = sanitize_key(f"{scene}_{depth.stem}")
        cam = root / "camdata_left" / scene / f"{depth.stem}.cam"
        image = root / render_pass / scene / f"{depth.stem}.png"
        reason = first_missing([image, cam])
        if reason:
            skipped.append((key, reason))
        else:
            items.append(Item(key, partial(load_sintel, image, depth, cam)))
    return items, skipped


# ----------------------------------------------------------------------------- KITTI depth

KITTI_DEPTH_SCALE = 1 / 256  # metres per count of the annotated depth PNGs


def read_kitti_focal(path: Path, camera: str) -> float:
    """f_px of rectified camera `camera` ("02" or "03") from a KITTI calib_cam_to_cam.txt.

    Spec (KITTI raw devkit, readme.txt): lines `name: values`; P_rect_0X is the 3x4 projection
    matrix after rectification, row-major, so its first element is the focal length in pixels.
    """
    name = f"P_rect_{camera}"
    for line in path.read_text().splitlines():
        key, _, values = line.partition(":")
        if key.strip() == name:
            numbers = [float(v) for v in values.split()]
            if len(numbers) != 12:
                raise ValueError(f"{name} has {len(numbers)} values, expected 12")
            return positive_number(numbers[0], f"{name}[0]")
    raise ValueError(f"no {name} line")


def load_kitti(image: Path, depth: Path, f_px: float) -> Loaded:
    """One KITTI raw image with its annotated 16-bit depth PNG (value / 256 m, 0 = no measurement)."""
    return Loaded(read_or_skip(image, read_image), read_or_skip(depth, partial(read_depth, png_scale=KITTI_DEPTH_SCALE)), f_px)


def _kitti_calib(root: Path, drive: str) -> Path:
    """The calibration of a drive: <date>/<drive>/calib_cam_to_cam.txt if present, else the
    date's <date>/calib_cam_to_cam.txt (where the raw-data download puts it)."""
    own = root / drive[:10] / drive / "calib_cam_to_cam.txt"
    return own if own.is_file() else root / drive[:10] / "calib_cam_to_cam.txt"


def _kitti_camera(root: Path, drive: str, cam_dir: Path) -> tuple[list[Item], Skipped]:
    """The samples of one drive and camera (image_02 or image_03)."""
    depths = sorted(cam_dir.glob("*.png"))
    keys = [sanitize_key(f"{drive}_{cam_dir.name}_{d.stem}") for d in depths]
    calib = _kitti_calib(root, drive)
    try:
        f_px = read_or_skip(calib, partial(read_kitti_focal, camera=cam_dir.name[-2:]))
    except SkipSample as e:
        return skip_group(keys, calib.parent, e)
    items: list[Item] = []
    skipped: Skipped = []
    for key, depth in zip(keys, depths):
        image = root / drive[:10] / drive / cam_dir.name / "data" / depth.name
        if image.is_file():
            items.append(Item(key, partial(load_kitti, image, depth, f_px)))
        else:
            skipped.append((key, f"no {image}"))
    return items, skipped


def find_kitti(root: Path, split: str = "val") -> tuple[list[Item], Skipped]:
    """KITTI annotated depth maps: root/data_depth_annotated/<split>/<drive>/proj_depth/
    groundtruth/image_0{2,3}/<frame>.png with the raw images root/<date>/<drive>/image_0{2,3}/
    data/<frame>.png and calibration root/<date>/calib_cam_to_cam.txt (or one per drive in
    root/<date>/<drive>/).

    Spec: KITTI depth devkit readme (cvlibs.net/datasets/kitti/eval_depth.php): 16-bit PNG,
    depth in metres = value / 256, 0 = no ground truth (LiDAR: sparse). f_px is the first
    element of P_rect_02 (image_02) or P_rect_03 (image_03) of the raw-data calibration.
    """
    annotated = require_dir(root / "data_depth_annotated" / split, "KITTI annotated depth folder")
    items: list[Item] = []
    skipped: Skipped = []
    for cam_dir in sorted(annotated.glob("*/proj_depth/groundtruth/image_0[23]")):
        found, bad = _kitti_camera(root, cam_dir.parents[2].name, cam_dir)
        items += found
        skipped += bad
    return items, skipped
