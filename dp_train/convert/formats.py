"""Public depth benchmarks -> dp_train shards (the logic of tools/convert/convert_public.py).

Each format has a `find_<format>` function that lists the samples under a root folder (in the
main process; a problem with a whole group, such as a bad calibration file, skips the group's
samples with a reason) as Items whose `load` is a `load_<format>` call reading one sample in a
worker process, raising SkipSample with the file's name on bad input. `write_shards` converts
the items in parallel and writes shards, the skip list and the report exactly like make_shards
(dp_train/convert/make_shards.py, whose readers, report, driver pieces and error types are reused).

Depth is stored in metres for every depth format here. Matting / boundary sets (DIS5K and
friends) have no depth: their samples store an all-zero depth map, i.e. every pixel invalid
(the schema's "no depth here"), `metric: false`, `f_px: null` and the alpha in `KEY.alpha.png`.
The expected layouts and commands are listed in tools/convert/README.md.
"""

from __future__ import annotations

import csv
import math
import re
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from dp_train.convert.make_shards import (
    IMAGE_EXTS,
    N_BINS,
    ConvertError,
    Report,
    Result,
    SampleStats,
    SkipSample,
    check_output,
    collect_results,
    count_problem,
    files_by_stem,
    is_number,
    parallel_results,
    positive_number,
    read_depth,
    read_image,
    read_mask,
    read_or_skip,
    read_pfm,
    safe_result,
    sample_stats,
    save_report,
    unusual_statistics,
)
from dp_train.data.schema import SampleMeta, ShardWriter, encode_sample, make_sample, sanitize_key

Skipped = list[tuple[str, str]]  # (sample name, reason)


@dataclass(frozen=True)
class Loaded:
    """A sample as read from disk, before validation and encoding.

    `depth` is HxW in metres (non-finite or <= 0 = invalid), None for sets without depth;
    `mask` is an optional HxW bool (False = exclude); `alpha` an optional HxW matte in [0, 1].
    """

    image: np.ndarray
    depth: np.ndarray | None
    f_px: float | None
    mask: np.ndarray | None = None
    alpha: np.ndarray | None = None


@dataclass(frozen=True)
class Item:
    """One sample on disk: its unique key and the call that reads it, a partial of a module-level
    `load_<format>` (picklable, so it runs in a worker; raises SkipSample on bad input)."""

    key: str
    load: Callable[[], Loaded]


@dataclass(frozen=True)
class FormatInfo:
    """What every sample of a format is (stored in SampleMeta, listed in tools/convert/README.md)."""

    metric: bool
    synthetic: bool
    sparse: bool
    has_depth: bool = True


_MATTING = FormatInfo(metric=False, synthetic=False, sparse=False, has_depth=False)
FORMATS: dict[str, FormatInfo] = {
    "middlebury": FormatInfo(metric=True, synthetic=False, sparse=False),
    "sintel": FormatInfo(metric=True, synthetic=True, sparse=False),
    "kitti": FormatInfo(metric=True, synthetic=False, sparse=True),
    "nyu": FormatInfo(metric=True, synthetic=False, sparse=False),
    "eth3d": FormatInfo(metric=True, synthetic=False, sparse=False),
    "ibims": FormatInfo(metric=True, synthetic=False, sparse=False),
    "hypersim": FormatInfo(metric=True, synthetic=True, sparse=False),
    "dis5k": _MATTING,
    "matting": _MATTING,
}


def _require_dir(path: Path, what: str) -> Path:
    """path, or ConvertError when it is not a folder."""
    if not path.is_dir():
        raise ConvertError(f"{what} {path}: no such folder (see tools/convert/README.md for the layout)")
    return path


def _skip_group(keys: Sequence[str], where: Path, error: SkipSample) -> tuple[list[Item], Skipped]:
    """A group of samples whose shared file (a calibration in folder `where`) is unusable:
    every key is skipped with the reason."""
    return [], [(key, f"{where}: {error}") for key in keys]


def _missing(paths: Sequence[Path]) -> str | None:
    """'no <file>' for the first path that is not a file, else None."""
    absent = next((p for p in paths if not p.is_file()), None)
    return None if absent is None else f"no {absent}"


def import_h5py() -> Any:
    """The h5py module, or ConvertError naming the extra that installs it (HDF5 formats only)."""
    try:
        import h5py
    except ImportError:
        raise ConvertError("reading HDF5 files (NYUv2 .mat, Hypersim) needs h5py: "
                           "pip install 'dp-train[convert]'") from None
    return h5py


def read_hdf5_array(path: Path, name: str = "dataset") -> np.ndarray:
    """The whole dataset `name` of an HDF5 file as a NumPy array."""
    with import_h5py().File(path, "r") as f:
        if name not in f:
            raise ValueError(f"no dataset '{name}' (has {sorted(f.keys())})")
        return np.asarray(f[name][()])


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
    for folder in sorted(p for p in _require_dir(root, "--root").iterdir() if p.is_dir()):
        if not any((folder / n).is_file() for n in names):
            continue
        reason = _missing([folder / n for n in names])
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
    depth_root = _require_dir(root / "depth", "Sintel depth folder")
    items: list[Item] = []
    skipped: Skipped = []
    for depth in sorted(depth_root.glob("*/*.dpt")):
        scene = depth.parent.name
        key = sanitize_key(f"{scene}_{depth.stem}")
        cam = root / "camdata_left" / scene / f"{depth.stem}.cam"
        image = root / render_pass / scene / f"{depth.stem}.png"
        reason = _missing([image, cam])
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
        return _skip_group(keys, calib.parent, e)
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
    annotated = _require_dir(root / "data_depth_annotated" / split, "KITTI annotated depth folder")
    items: list[Item] = []
    skipped: Skipped = []
    for cam_dir in sorted(annotated.glob("*/proj_depth/groundtruth/image_0[23]")):
        found, bad = _kitti_camera(root, cam_dir.parents[2].name, cam_dir)
        items += found
        skipped += bad
    return items, skipped


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
    path = _require_dir(root, "--root") / NYU_FILE
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
            return _skip_group(keys, scene / folder, e)
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
    for scene in sorted(p.parents[1] for p in _require_dir(root, "--root").glob("*/ground_truth_depth/dslr_images")):
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
        names = sorted(p.stem for p in _require_dir(root / "rgb", "iBims-1 rgb folder").glob("*.png"))
    items: list[Item] = []
    skipped: Skipped = []
    for name in names:
        image, depth, calib = root / "rgb" / f"{name}.png", root / "depth" / f"{name}.png", root / "calib" / f"{name}.txt"
        masks = tuple(m for m in (root / d / f"{name}.png" for d in ("mask_invalid", "mask_transp")) if m.is_file())
        reason = _missing([image, depth, calib])
        if reason:
            skipped.append((name, reason))
        else:
            items.append(Item(sanitize_key(name), partial(load_ibims, image, depth, calib, masks)))
    return items, skipped


# ----------------------------------------------------------------------------- DIS5K / matting

_ALPHA_MODES = ("L", "P", "1", "RGB")  # 8-bit modes converted to one gray channel


def read_alpha(path: Path) -> np.ndarray:
    """Read an 8-bit alpha matte or binary mask PNG as HxW float32 in [0, 1] (value / 255)."""
    with Image.open(path) as img:
        if img.mode not in _ALPHA_MODES:
            raise ValueError(f"expected an 8-bit grayscale matte, got mode {img.mode}")
        return np.asarray(img.convert("L"), np.float32) / 255


def load_matting(image: Path, alpha: Path) -> Loaded:
    """One image + alpha matte pair of a boundary set: no depth (every pixel invalid), no focal length."""
    return Loaded(read_or_skip(image, read_image), None, None, alpha=read_or_skip(alpha, read_alpha))


def find_matting(folder: Path, image_dir: str = "im", alpha_dir: str = "gt") -> tuple[list[Item], Skipped]:
    """Boundary sets without depth: images in folder/<image_dir> matched by file stem with
    8-bit .png mattes or masks in folder/<alpha_dir>.

    DIS5K (xuebinqin.github.io/dis): DIS-TR, DIS-VD and DIS-TE1..4, each with im/*.jpg and gt/*.png
    (8-bit, 0 background, 255 object). Stored alpha = value / 255; depth all invalid, no f_px.
    """
    images = files_by_stem(_require_dir(folder / image_dir, "image folder"), IMAGE_EXTS)
    alphas = files_by_stem(_require_dir(folder / alpha_dir, "alpha folder"), (".png",))
    items: list[Item] = []
    skipped: Skipped = []
    for stem in sorted(images.keys() | alphas.keys()):
        pair = {"image": images.get(stem, []), "alpha": alphas.get(stem, [])}
        reason = next(filter(None, (count_problem(what, files) for what, files in pair.items())), None)
        if reason:
            skipped.append((stem, reason))
        else:
            items.append(Item(sanitize_key(stem), partial(load_matting, pair["image"][0], pair["alpha"][0])))
    return items, skipped


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
    for depth in sorted(_require_dir(root, "--root").glob(pattern)):
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


# ----------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class Settings:
    """What is stored for every sample of a run."""

    dataset: str
    info: FormatInfo
    depth_format: str = "npy16"
    image_format: str = "jpg"


def convert_item(item: Item, settings: Settings) -> Result:
    """Load, validate and encode one item (runs in a worker process); bad input -> a skip reason."""
    return safe_result(item.key, partial(_convert, item, settings))


def _convert(item: Item, settings: Settings) -> tuple[dict[str, bytes | str], SampleStats]:
    """convert_item without the error handling."""
    loaded = item.load()
    h, w = loaded.image.shape[:2]
    for name, plane in (("depth", loaded.depth), ("mask", loaded.mask), ("alpha", loaded.alpha)):
        if plane is not None and plane.shape != (h, w):
            raise SkipSample(f"size mismatch: image {w}x{h}, {name} shape {plane.shape}")
    info = settings.info
    depth = np.zeros((h, w), np.float32) if loaded.depth is None else loaded.depth
    meta = SampleMeta(settings.dataset, loaded.f_px, info.metric, info.synthetic, info.sparse)
    sample = make_sample(item.key, loaded.image, depth, meta, loaded.mask, loaded.alpha)
    if info.has_depth and not sample.valid.any():
        raise SkipSample("no valid depth pixels (all non-finite, <= 0 or masked)")
    raw = encode_sample(sample, settings.depth_format, settings.image_format)
    if not sample.valid.any():
        return raw, SampleStats(w, h, 0, math.inf, -math.inf, np.zeros(N_BINS, np.int64), loaded.f_px)
    return raw, sample_stats(sample.depth[sample.valid], w, h, loaded.f_px)


def _unique_keys(items: Sequence[Item], skipped: Skipped) -> list[Item]:
    """items without those whose key an earlier item already uses (those go to `skipped`)."""
    seen: set[str] = set()
    kept = []
    for item in items:
        if item.key in seen:
            skipped.append((item.key, "duplicate sample key"))
        else:
            seen.add(item.key)
            kept.append(item)
    return kept


def write_shards(
    items: Sequence[Item],
    skipped: Skipped,
    settings: Settings,
    out: Path,
    prefix: str,
    workers: int = 1,
    samples_per_shard: int = 1000,
) -> int:
    """Convert items into shards `out/{prefix}-*.tar` with index, skip list and report.

    Returns 0, or 1 when every sample was skipped; ConvertError when the output would
    replace existing shards.
    """
    check_output(out, prefix)
    skipped = list(skipped)
    items = _unique_keys(items, skipped)
    report = Report()
    with ShardWriter(out, prefix, max_samples=samples_per_shard,
                     depth_format=settings.depth_format, image_format=settings.image_format) as writer:
        results = parallel_results(partial(convert_item, settings=settings), items, workers)
        collect_results(tqdm(results, total=len(items), unit="sample", desc=settings.dataset, disable=None),
                        writer, report, skipped)
    info = settings.info
    summary = report.summary()
    if not report.hist.any():  # no depth at all (matting sets): no depth statistics
        summary["depth"] = None
    return save_report({
        "dataset": settings.dataset, "units": "m" if info.metric else "none", "metric": info.metric,
        "depth_kind": "depth", "synthetic": info.synthetic, "sparse": info.sparse,
        "samples_written": writer.num_samples, "samples_skipped": len(skipped),
        "shards": len(writer.shards), **summary, "warnings": unusual_statistics(summary, info.metric),
        "index": str(writer.index_path), "report": str(out / f"{prefix}.report.json"),
        "skipped_list": str(out / f"{prefix}.skipped.txt"),
    }, sorted(skipped))
