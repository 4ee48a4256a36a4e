"""Readers for the benchmarks with laser-scanned ground truth: ETH3D high-res multi-view (COLMAP cameras,
depth resampled into the undistorted image) and iBims-1 (16-bit depth PNGs with invalid and transparency
masks). Depth in metres.

The `find_<format>` / `load_<format>` contract: dp_train/convert/formats.py; layouts: docs/convert.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dp_train.convert.errors import SkipSample
from dp_train.convert.formats import Item, Loaded, Skipped, first_missing, require_dir, skip_group
from dp_train.convert.readers import is_number, positive_number, read_depth, read_image, read_mask, read_or_skip
from dp_train.shards import sanitize_key

# ----------------------------------------------------------------------------- ETH3D


@dataclass(frozen=True)
class ColmapCamera:
    """A camera of a COLMAP text model (cameras.txt)."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]


COLMAP_MODELS = {"PINHOLE": 4, "THIN_PRISM_FISHEYE": 12}  # model -> number of parameters


def _colmap_lines(path: Path) -> Iterator[list[str]]:
    """The whitespace-split data lines of a COLMAP text file (comments skipped)."""
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            yield line.split()


def read_colmap_cameras(path: Path) -> dict[int, ColmapCamera]:
    """Read a COLMAP cameras.txt: CAMERA_ID MODEL WIDTH HEIGHT PARAMS[] per line.

    Spec (colmap.github.io/format.html; eth3d.net/documentation "Camera models"): PINHOLE
    params are fx fy cx cy; THIN_PRISM_FISHEYE adds k1 k2 p1 p2 k3 k4 sx1 sy1.
    """
    cameras = {}
    for fields in _colmap_lines(path):
        model = fields[1] if len(fields) > 1 else "?"
        if model not in COLMAP_MODELS:
            raise ValueError(f"camera model {model!r} is not supported ({', '.join(COLMAP_MODELS)})")
        if len(fields) != 4 + COLMAP_MODELS[model]:
            raise ValueError(f"{model} camera line needs {4 + COLMAP_MODELS[model]} fields: {' '.join(fields)}")
        cameras[int(fields[0])] = ColmapCamera(model, int(fields[2]), int(fields[3]),
                                               tuple(float(v) for v in fields[4:]))
    return cameras


def read_colmap_image_cameras(path: Path) -> dict[str, int]:
    """Image file name (without folders) -> CAMERA_ID, from a COLMAP images.txt.

    Each image has a line IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME followed by a line of
    2-D points; the image line is the one whose tenth field is a name, not a number.
    """
    return {Path(f[9]).name: int(f[8]) for f in _colmap_lines(path) if len(f) >= 10 and not is_number(f[9])}


def _thin_prism_fisheye(x: np.ndarray, y: np.ndarray, coeffs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP's ThinPrismFisheyeCameraModel distortion of normalised coordinates: equidistant
    fisheye (radius r -> atan r), then radial k1..k4, tangential p1 p2 and thin-prism sx1 sy1."""
    k1, k2, p1, p2, k3, k4, sx1, sy1 = coeffs
    r = np.hypot(x, y)
    scale = np.arctan(r) / np.where(r > 1e-12, r, 1.0)
    scale[r <= 1e-12] = 1.0
    u, v = x * scale, y * scale
    u2, v2, uv = u * u, v * v, u * v
    r2 = u2 + v2
    radial = k1 * r2 + k2 * r2**2 + k3 * r2**3 + k4 * r2**4
    du = u * radial + 2 * p1 * uv + p2 * (r2 + 2 * u2) + sx1 * r2
    dv = v * radial + 2 * p2 * uv + p1 * (r2 + 2 * v2) + sy1 * r2
    return u + du, v + dv


def colmap_project(camera: ColmapCamera, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates (X/Z, Y/Z) -> COLMAP pixel coordinates (origin at the top-left
    corner of the top-left pixel, so pixel (row i, column j) spans [j, j+1) x [i, i+1))."""
    fx, fy, cx, cy = camera.params[:4]
    if camera.model == "THIN_PRISM_FISHEYE":
        x, y = _thin_prism_fisheye(x, y, camera.params[4:])
    return fx * x + cx, fy * y + cy


def resample_depth(depth: np.ndarray, source: ColmapCamera, target: ColmapCamera, block: int = 256) -> np.ndarray:
    """Depth of the `source` camera seen by `target` (same pose, other intrinsics), nearest
    neighbour: each target pixel centre's ray is projected into the source image. Z-depth is
    unchanged by this; pixels falling outside the source image become NaN (invalid)."""
    fx, fy, cx, cy = target.params[:4]
    out = np.full((target.height, target.width), np.nan, np.float32)
    x = (np.arange(target.width) + 0.5 - cx) / fx
    for top in range(0, target.height, block):
        y = (np.arange(top, min(top + block, target.height)) + 0.5 - cy) / fy
        u, v = colmap_project(source, *np.meshgrid(x, y))
        col, row = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        inside = (col >= 0) & (col < source.width) & (row >= 0) & (row < source.height)
        out[top:top + len(y)][inside] = depth[row[inside], col[inside]]
    return out


def read_raw_depth(path: Path, width: int, height: int) -> np.ndarray:
    """Read a headerless little-endian float32 depth map of width x height, row-major."""
    values = np.fromfile(path, "<f4")
    if values.size != width * height:
        raise ValueError(f"{values.size} floats, expected {width}x{height} = {width * height}")
    return values.reshape(height, width)


def load_eth3d(image: Path, depth: Path, camera: ColmapCamera, depth_camera: ColmapCamera) -> Loaded:
    """One ETH3D DSLR image: the undistorted JPEG (PINHOLE `camera`, f_px = fx) and the depth map
    of its distorted original (`depth_camera`), resampled onto the undistorted image."""
    rgb = read_or_skip(image, read_image)
    if rgb.shape[:2] != (camera.height, camera.width):
        raise SkipSample(f"{image.name} is {rgb.shape[1]}x{rgb.shape[0]} "
                         f"but cameras.txt says {camera.width}x{camera.height}")
    raw = read_or_skip(depth, partial(read_raw_depth, width=depth_camera.width, height=depth_camera.height))
    return Loaded(rgb, resample_depth(raw, depth_camera, camera), camera.params[0])


ETH3D_CALIBRATIONS = ("dslr_calibration_undistorted", "dslr_calibration_jpg")  # image's, depth map's


def _eth3d_cameras(calibration: Path) -> dict[str, ColmapCamera]:
    """Image name -> camera, from a calibration folder's cameras.txt and images.txt."""
    cameras = read_or_skip(calibration / "cameras.txt", read_colmap_cameras)
    by_image = read_or_skip(calibration / "images.txt", read_colmap_image_cameras)
    unknown = sorted({c for c in by_image.values() if c not in cameras})
    if unknown:
        raise SkipSample(f"images.txt uses camera id {unknown[0]}, which cameras.txt lacks")
    return {name: cameras[c] for name, c in by_image.items()}


def _eth3d_problem(name: str, image: Path, cameras: dict[str, dict[str, ColmapCamera]]) -> str | None:
    """Why the scene's image `name` cannot be converted, or None."""
    if not image.is_file():
        return f"no {image}"
    for folder, by_name in cameras.items():
        if name not in by_name:
            return f"{name} is not in {folder}/images.txt"
    model = cameras[ETH3D_CALIBRATIONS[0]][name].model
    return None if model == "PINHOLE" else f"undistorted camera of {name} is {model}, not PINHOLE"


def _eth3d_scene(scene: Path) -> tuple[list[Item], Skipped]:
    """The samples of one ETH3D scene folder."""
    depths = sorted(p for p in (scene / "ground_truth_depth" / "dslr_images").glob("*") if p.is_file())
    keys = [sanitize_key(f"{scene.name}_{d.stem}") for d in depths]
    cameras = {}
    for folder in ETH3D_CALIBRATIONS:
        try:
            cameras[folder] = _eth3d_cameras(scene / folder)
        except SkipSample as e:
            return skip_group(keys, scene / folder, e)
    undistorted, distorted = (cameras[folder] for folder in ETH3D_CALIBRATIONS)
    items: list[Item] = []
    skipped: Skipped = []
    for key, depth in zip(keys, depths):
        image = scene / "images" / "dslr_images_undistorted" / depth.name
        reason = _eth3d_problem(depth.name, image, cameras)
        if reason:
            skipped.append((key, reason))
        else:
            items.append(Item(key, partial(load_eth3d, image, depth, undistorted[depth.name], distorted[depth.name])))
    return items, skipped


def find_eth3d(root: Path) -> tuple[list[Item], Skipped]:
    """ETH3D high-res multi-view scenes: root/<scene>/ground_truth_depth/dslr_images/<name>,
    images/dslr_images_undistorted/<name> and the COLMAP text calibrations (cameras.txt,
    images.txt) in dslr_calibration_undistorted/ and dslr_calibration_jpg/.

    Spec: eth3d.net/documentation. Depth maps are headerless little-endian float32, row-major,
    metres along the optical axis, inf where there is no ground truth, at the size of the
    original images, and they match the original (distorted, THIN_PRISM_FISHEYE) images, not
    the undistorted ones: each is resampled (nearest) onto the undistorted image, whose PINHOLE
    camera (fx fy cx cy) gives f_px = fx.
    """
    items: list[Item] = []
    skipped: Skipped = []
    for scene in sorted(p.parents[1] for p in require_dir(root, "--root").glob("*/ground_truth_depth/dslr_images")):
        found, bad = _eth3d_scene(scene)
        items += found
        skipped += bad
    return items, skipped


# ----------------------------------------------------------------------------- iBims-1

IBIMS_DEPTH_SCALE = 50.0 / 65535  # metres per count: 16-bit depth PNGs cover 0-50 m


def read_ibims_calib(path: Path) -> float:
    """fx from an iBims-1 calib/<name>.txt holding "fx,fy,cx,cy" (pixels)."""
    values = [float(v) for v in re.split(r"[,\s]+", path.read_text().strip()) if v]
    if len(values) != 4:
        raise ValueError(f"expected 4 numbers fx,fy,cx,cy, got {len(values)}")
    return positive_number(values[0], "fx")


def load_ibims(image: Path, depth: Path, calib: Path, masks: tuple[Path, ...]) -> Loaded:
    """One iBims-1 image; a pixel is valid where depth > 0 and every mask is nonzero."""
    depth_m = read_or_skip(depth, partial(read_depth, png_scale=IBIMS_DEPTH_SCALE))
    planes = [read_or_skip(m, read_mask) for m in masks]
    mask = np.logical_and.reduce(planes) if planes else None
    return Loaded(read_or_skip(image, read_image), depth_m, read_or_skip(calib, read_ibims_calib), mask)


def find_ibims(root: Path) -> tuple[list[Item], Skipped]:
    """iBims-1 (ibims1_core_raw): the names in root/imagelist.txt (else every rgb/*.png) with
    rgb/<name>.png, depth/<name>.png, calib/<name>.txt and, when present, mask_invalid/ and
    mask_transp/<name>.png.

    Layout as in the dataset README (www.bgu.tum.de/lmf/ibims1) and public loaders, not checked
    against the README itself: 16-bit depth PNG with depth in metres = value * 50 / 65535, 0 =
    invalid; the masks exclude invalid and transparent surfaces (0 = exclude); calib holds
    "fx,fy,cx,cy" in pixels, f_px = fx.
    """
    listing = root / "imagelist.txt"
    if listing.is_file():
        names = listing.read_text().split()
    else:
        names = sorted(p.stem for p in require_dir(root / "rgb", "iBims-1 rgb folder").glob("*.png"))
    items: list[Item] = []
    skipped: Skipped = []
    for name in names:
        image, depth, calib = root / "rgb" / f"{name}.png", root / "depth" / f"{name}.png", root / "calib" / f"{name}.txt"
        masks = tuple(m for m in (root / d / f"{name}.png" for d in ("mask_invalid", "mask_transp")) if m.is_file())
        reason = first_missing([image, depth, calib])
        if reason:
            skipped.append((name, reason))
        else:
            items.append(Item(sanitize_key(name), partial(load_ibims, image, depth, calib, masks)))
    return items, skipped
