"""Readers for the formats stored in HDF5 files, which need h5py (the `convert` extra): the NYU Depth v2
labelled set (a MATLAB v7.3 .mat) and Hypersim (rendered distance maps and tone-mapped colour). Depth in metres.

The `find_<format>` / `load_<format>` contract: dp_train/convert/formats.py; layouts: docs/convert.md.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dp_train.convert.errors import ConvertError, SkipSample
from dp_train.convert.formats import Item, Loaded, Skipped, import_h5py, read_hdf5_array, require_dir
from dp_train.convert.readers import read_image, read_or_skip
from dp_train.shards import sanitize_key

# ----------------------------------------------------------------------------- NYU Depth v2

NYU_FILE = "nyu_depth_v2_labeled.mat"
NYU_F_PX = 518.85790117450188  # fx_rgb of the Kinect colour camera (NYU toolbox camera_params.m)


def _nyu_count(f: Any) -> int:
    """Number of images in an open labelled .mat; ValueError when its layout is not NYUv2's."""
    for name in ("images", "depths"):
        if name not in f:
            raise ValueError(f"no '{name}' dataset")
    images, depths = f["images"], f["depths"]
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"'images' is {images.dtype} {images.shape}, expected uint8 (N, 3, W, H)")
    if depths.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"'depths' shape {depths.shape} does not match 'images' {images.shape}")
    return int(images.shape[0])


def read_split_numbers(path: Path, count: int) -> set[int]:
    """0-based indices from a file of 1-based image numbers (MATLAB convention, e.g. the
    testNdxs of NYUv2's splits.mat), separated by whitespace or commas; ConvertError if bad."""
    try:
        tokens = [t for t in re.split(r"[\s,]+", path.read_text()) if t]
        numbers = [int(t) for t in tokens]
    except OSError as e:
        raise ConvertError(f"cannot read split file {path}: {e.strerror or e}") from None
    except ValueError:
        raise ConvertError(f"split file {path}: expected 1-based image numbers") from None
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad or not numbers:
        raise ConvertError(f"split file {path}: " + (f"image number {bad[0]} is outside 1..{count}"
                                                     if bad else "no image numbers"))
    return {n - 1 for n in numbers}


def load_nyu(path: Path, index: int) -> Loaded:
    """Image and depth number `index` (0-based) of the labelled .mat, undoing MATLAB's
    column-major storage: (3, W, H) -> (H, W, 3) and (W, H) -> (H, W)."""
    with import_h5py().File(path, "r") as f:
        image = np.asarray(f["images"][index])
        depth = np.asarray(f["depths"][index])
    return Loaded(np.ascontiguousarray(image.transpose(2, 1, 0)), depth.T, NYU_F_PX)


def find_nyu(root: Path, split: str = "all", split_file: Path | None = None) -> tuple[list[Item], Skipped]:
    """NYU Depth v2 labelled set root/nyu_depth_v2_labeled.mat: all images, or the 1-based
    image numbers listed in `split_file` (split "test", e.g. splits.mat's testNdxs) or the rest
    (split "train").

    Spec: cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html and its toolbox. The file is MATLAB
    v7.3 (HDF5); MATLAB's images (480x640x3xN uint8) and depths (480x640xN, metres, filled in:
    no invalid pixels) are column-major, so h5py sees (N, 3, 640, 480) and (N, 640, 480).
    f_px = fx_rgb = 518.8579 (toolbox camera_params.m, the Kinect colour camera).
    """
    path = require_dir(root, "--root") / NYU_FILE
    if (split == "all") != (split_file is None):
        raise ConvertError("--split train/test needs --split-file (and --split-file needs one of them)")
    try:
        with import_h5py().File(path, "r") as f:
            count = _nyu_count(f)
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: not a NYUv2 labelled MATLAB v7.3 file: {e}") from None
    indices = set(range(count))
    if split_file is not None:
        test = read_split_numbers(split_file, count)
        indices = test if split == "test" else indices - test
    return [Item(f"nyu_{i + 1:04d}", partial(load_nyu, path, i)) for i in sorted(indices)], []


# ----------------------------------------------------------------------------- Hypersim


@dataclass(frozen=True)
class HypersimCamera:
    """A Hypersim scene's image size and M_cam_from_uv (3x3, row-major): it maps (u, v, 1), with
    u, v in [-1, 1] at the image borders (v up), to a camera-space ray (the camera looks along -z)."""

    width: int
    height: int
    m_cam_from_uv: tuple[float, ...]

    @property
    def f_px(self) -> float:
        """Horizontal focal length in pixels: half the width over tan(horizontal half-FOV)."""
        return self.width / (2 * self.m_cam_from_uv[0])


_TAN30 = math.tan(math.radians(30))
HYPERSIM_DEFAULT_CAMERA = HypersimCamera(1024, 768, (_TAN30, 0, 0, 0, _TAN30 * 768 / 1024, 0, 0, 0, -1))
"""Hypersim's standard camera: 1024x768, 60 degree horizontal FOV (f_px = 512 / tan 30 = 886.81)."""
_M_CAM_FROM_UV = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file with a header naming at least `columns`; ConvertError otherwise."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConvertError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    missing = [c for c in columns if not rows or c not in rows[0]]
    if missing:
        raise ConvertError(f"{path}: no rows or missing column(s) {', '.join(missing)}")
    return rows


def read_hypersim_cameras(path: Path) -> dict[str, HypersimCamera]:
    """Scene name -> camera from ml-hypersim's contrib/mikeroberts3000/metadata_camera_parameters.csv
    (columns scene_name, settings_output_img_width/height, M_cam_from_uv_00 ... _22)."""
    size = ("settings_output_img_width", "settings_output_img_height")
    rows = _read_csv(path, ("scene_name", *size, *_M_CAM_FROM_UV))
    try:
        return {r["scene_name"]: HypersimCamera(int(float(r[size[0]])), int(float(r[size[1]])),
                                                tuple(float(r[c]) for c in _M_CAM_FROM_UV)) for r in rows}
    except ValueError as e:
        raise ConvertError(f"{path}: {e}") from None


def read_hypersim_split(path: Path, split: str) -> set[tuple[str, str, int]]:
    """(scene, camera, frame) of split `split` from metadata_images_split_scene_v1.csv."""
    rows = _read_csv(path, ("scene_name", "camera_name", "frame_id", "split_partition_name"))
    try:
        return {(r["scene_name"], r["camera_name"], int(r["frame_id"]))
                for r in rows if r["split_partition_name"] == split}
    except ValueError as e:
        raise ConvertError(f"{path}: {e}") from None


def hypersim_planar_depth(distance: np.ndarray, camera: HypersimCamera) -> np.ndarray:
    """Planar depth (along the optical axis) from Hypersim's depth_meters, the distance to the
    camera centre along each pixel's ray: z = distance * |ray_z| / |ray|."""
    u = (np.arange(camera.width) + 0.5) * 2 / camera.width - 1
    v = 1 - (np.arange(camera.height) + 0.5) * 2 / camera.height
    uu, vv = np.meshgrid(u, v)
    rays = np.stack([uu, vv, np.ones_like(uu)], axis=-1) @ np.reshape(camera.m_cam_from_uv, (3, 3)).T
    return distance * np.abs(rays[..., 2]) / np.linalg.norm(rays, axis=-1)


def tonemap_hypersim(rgb: np.ndarray) -> np.ndarray:
    """Hypersim's tone mapping (code/python/tools/scene_generate_images_tonemap.py), over all
    pixels: scale so the 90th brightness percentile becomes 0.8 after gamma 1/2.2, to uint8."""
    rgb = np.nan_to_num(rgb.astype(np.float64))
    brightness = rgb @ np.array([0.3, 0.59, 0.11])
    p90 = float(np.percentile(brightness, 90))
    scale = 0.8**2.2 / p90 if p90 >= 1e-4 else 0.0
    return np.rint(np.clip(np.maximum(scale * rgb, 0) ** (1 / 2.2), 0, 1) * 255).astype(np.uint8)


def read_hypersim_color(path: Path) -> np.ndarray:
    """A linear HDR frame.XXXX.color.hdf5, tone-mapped to HxWx3 uint8."""
    rgb = read_hdf5_array(path)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected HxWx3 colour, got shape {rgb.shape}")
    return tonemap_hypersim(rgb)


def load_hypersim(depth: Path, image: Path, camera: HypersimCamera) -> Loaded:
    """One Hypersim frame: depth_meters (ray distance) converted to planar depth, the image from
    tonemap.jpg or a tone-mapped color.hdf5."""
    distance = read_or_skip(depth, read_hdf5_array)
    if distance.shape != (camera.height, camera.width):
        raise SkipSample(f"{depth.name} has shape {distance.shape}, the camera is {camera.width}x{camera.height}")
    rgb = read_or_skip(image, read_image if image.suffix == ".jpg" else read_hypersim_color)
    return Loaded(rgb, hypersim_planar_depth(distance.astype(np.float64), camera), camera.f_px)


def _hypersim_image(depth: Path, camera_name: str) -> Path | None:
    """The frame's tonemap.jpg (preferred) or color.hdf5, None if neither exists."""
    frame = depth.name.removesuffix(".depth_meters.hdf5")
    images = depth.parents[1]
    for path in (images / f"scene_{camera_name}_final_preview" / f"{frame}.tonemap.jpg",
                 images / f"scene_{camera_name}_final_hdf5" / f"{frame}.color.hdf5"):
        if path.is_file():
            return path
    return None


def find_hypersim(
    root: Path,
    camera_csv: Path | None = None,
    split: str | None = None,
    split_file: Path | None = None,
) -> tuple[list[Item], Skipped]:
    """Hypersim frames root/<scene>/images/scene_<cam>_geometry_hdf5/frame.XXXX.depth_meters.hdf5
    with scene_<cam>_final_preview/frame.XXXX.tonemap.jpg (else scene_<cam>_final_hdf5/
    frame.XXXX.color.hdf5, tone-mapped here); optionally only the frames of `split` listed in
    `split_file` (metadata_images_split_scene_v1.csv).

    Spec: github.com/apple/ml-hypersim README. depth_meters ("dataset", HxW) is the distance
    from the camera centre along each pixel's ray in metres (meters_per_asset_unit applied),
    NaN where there is no surface; it is converted to planar depth. The camera of each scene
    comes from `camera_csv` (contrib/mikeroberts3000/metadata_camera_parameters.csv, whose
    M_cam_from_uv also covers tilt-shift scenes), else the standard 1024x768, 60 degree
    camera; f_px = width / (2 M_cam_from_uv[0, 0]), 886.81 for the standard camera.
    """
    import_h5py()
    if (split is None) != (split_file is None):
        raise ConvertError("--split and --split-file go together")
    cameras = read_hypersim_cameras(camera_csv) if camera_csv else None
    wanted = read_hypersim_split(split_file, split) if split_file and split else None
    items: list[Item] = []
    skipped: Skipped = []
    pattern = "*/images/scene_*_geometry_hdf5/frame.*.depth_meters.hdf5"
    for depth in sorted(require_dir(root, "--root").glob(pattern)):
        scene, cam = depth.parents[2].name, depth.parent.name.removeprefix("scene_").removesuffix("_geometry_hdf5")
        frame = depth.name.split(".")[1]
        key = sanitize_key(f"{scene}_{cam}_{frame}")
        if wanted is not None and (not frame.isdigit() or (scene, cam, int(frame)) not in wanted):
            continue
        image = _hypersim_image(depth, cam)
        camera = HYPERSIM_DEFAULT_CAMERA if cameras is None else cameras.get(scene)
        if image is None:
            skipped.append((key, f"no tonemap.jpg or color.hdf5 for {depth.name}"))
        elif camera is None:
            skipped.append((key, f"scene {scene} is not in {camera_csv}"))
        else:
            items.append(Item(key, partial(load_hypersim, depth, image, camera)))
    return items, skipped
