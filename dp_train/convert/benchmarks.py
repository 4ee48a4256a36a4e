"""Readers for the paper's remaining benchmarks: Booster, Sun-RGBD, Spring, focal-length photo
folders (DDDP, FiveK, PPR10K, RAISE, SPAQ, ZOOM) and a sample exclusion list (DIS-5k); nuScenes is in
dp_train/convert/nuscenes.py.

Same contract as dp_train/convert/formats.py: a `find_<format>` lists Items (reading nothing heavy), whose
`load` reads one sample in a worker and raises SkipSample naming the file on bad input; the converter
(`python -m dp_train convert`) writes them like every other format. Layouts and commands:
docs/convert.md. Depth is stored in metres.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from dp_train.convert.errors import ConvertError, SkipSample
from dp_train.convert.formats import (
    FormatInfo,
    Item,
    Loaded,
    Skipped,
    first_missing,
    import_h5py,
    require_dir,
    skip_group,
)
from dp_train.convert.readers import IMAGE_EXTS, positive_number, read_image, read_mask, read_or_skip
from dp_train.shards import sanitize_key
from dp_train.utils.exif import NoFocal, focal_px_from_exif

BENCHMARK_FORMATS: dict[str, FormatInfo] = {
    "booster": FormatInfo(metric=True, synthetic=False, sparse=False),
    "sunrgbd": FormatInfo(metric=True, synthetic=False, sparse=False),
    "spring": FormatInfo(metric=True, synthetic=True, sparse=False),
    "focal": FormatInfo(metric=False, synthetic=False, sparse=False, has_depth=False),
}


def _depth_from_disparity(disparity: np.ndarray, focal_times_baseline: float) -> np.ndarray:
    """Depth = f * B / d where the disparity is finite and positive, NaN (invalid) elsewhere."""
    disparity = np.asarray(disparity, dtype=np.float64)
    ok = np.isfinite(disparity) & (disparity > 0)
    return np.where(ok, focal_times_baseline / np.where(ok, disparity, 1.0), np.nan)


# ----------------------------------------------------------------------------- Booster


def read_booster_calib(path: Path) -> tuple[float, float]:
    """(f_px, baseline in metres) of the left camera from a Booster `calib_00-02.xml`.

    Format: an OpenCV FileStorage XML (as read by the Booster toolkit with cv2.FileStorage):
    `proj_matL`, the left rectified 3x4 projection matrix (its [0, 0] is f in pixels), and
    `baselineLR`, the baseline in millimetres.
    """
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        if not storage.isOpened():
            raise ValueError("not an OpenCV FileStorage file")
        projection = storage.getNode("proj_matL").mat()
        baseline = storage.getNode("baselineLR").real()
    finally:
        storage.release()
    if projection is None or projection.shape != (3, 4):
        raise ValueError("no 3x4 proj_matL")
    return positive_number(projection[0, 0], "proj_matL[0,0]"), positive_number(baseline, "baselineLR") / 1000


def load_booster(image: Path, disparity: Path, mask: Path | None, f_px: float, baseline_m: float) -> Loaded:
    """One Booster left image: depth = f * B / disparity (disp_00.npy, pixels), valid where mask_00.png > 0."""
    disp = read_or_skip(disparity, partial(np.load, allow_pickle=False))
    valid = None if mask is None else read_or_skip(mask, read_mask)
    return Loaded(read_or_skip(image, read_image), _depth_from_disparity(disp, f_px * baseline_m), f_px, valid)


def find_booster(root: Path) -> tuple[list[Item], Skipped]:
    """Booster (train/balanced, 228 images): root/<scene>/{camera_00/im*.png, disp_00.npy, mask_00.png,
    calib_00-02.xml}; every left image under every illumination is a sample keyed `<scene>_<image>`.

    Spec: Ramirez et al., "Open Challenges in Deep Stereo: the Booster Dataset" (CVPR 2022) and its data
    release (amsacta.unibo.it/6876): disp_00.npy is the left view's float32 disparity in pixels (0 unknown),
    mask_00.png the valid-pixel mask, calib_00-02.xml see `read_booster_calib`.
    """
    items: list[Item] = []
    skipped: Skipped = []
    for scene in sorted(p for p in require_dir(root, "--root").iterdir() if (p / "camera_00").is_dir()):
        images = sorted(p for p in (scene / "camera_00").iterdir() if p.suffix.lower() in IMAGE_EXTS)
        keys = [sanitize_key(f"{scene.name}_{p.stem}") for p in images]
        calib, disparity, mask = scene / "calib_00-02.xml", scene / "disp_00.npy", scene / "mask_00.png"
        reason = first_missing([calib, disparity])
        if reason:
            skipped += [(key, reason) for key in keys]
            continue
        try:
            f_px, baseline = read_or_skip(calib, read_booster_calib)
        except SkipSample as err:
            skipped += skip_group(keys, scene, err)[1]
            continue
        load = partial(load_booster, disparity=disparity, mask=mask if mask.is_file() else None, f_px=f_px,
                       baseline_m=baseline)
        items += [Item(key, partial(load, image)) for key, image in zip(keys, images)]
    return items, skipped


# ----------------------------------------------------------------------------- SUN RGB-D


def read_sunrgbd_depth(path: Path) -> np.ndarray:
    """A SUN RGB-D depth PNG in metres: 16-bit values rotated right by 3 bits are millimetres (the SUN RGB-D
    toolbox's read3dPoints: bitor(bitshift(d, -3), bitshift(d, 16 - 3)) / 1000); 0 = no measurement."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError("expected a 16-bit single-channel PNG")
    return ((raw >> 3) | (raw << 13)).astype(np.float64) / 1000.0


def read_intrinsics_fx(path: Path) -> float:
    """fx of a 3x3 row-major intrinsics text file (`fx 0 cx 0 fy cy 0 0 1`, SUN RGB-D's intrinsics.txt)."""
    values = [float(v) for v in path.read_text().split()]
    if len(values) != 9:
        raise ValueError(f"{len(values)} numbers, expected a 3x3 matrix")
    return positive_number(values[0], "fx")


def load_sunrgbd(image: Path, depth: Path, intrinsics: Path) -> Loaded:
    """One SUN RGB-D capture: image/*.jpg, depth/*.png (see `read_sunrgbd_depth`), f_px from intrinsics.txt."""
    f_px = read_or_skip(intrinsics, read_intrinsics_fx)
    return Loaded(read_or_skip(image, read_image), read_or_skip(depth, read_sunrgbd_depth), f_px)


def _scene_names(split_file: Path) -> set[str]:
    """Scene folders listed in a split file, one per line, as paths relative to the SUNRGBD folder (a
    leading path up to and including `SUNRGBD/`, as in the toolbox's allsplit.mat, is dropped)."""
    try:
        lines = split_file.read_text().split()
    except OSError as err:
        raise ConvertError(f"cannot read split file {split_file}: {err.strerror or err}") from None
    names = {re.sub(r"^.*?SUNRGBD/", "", line.strip()).strip("/") for line in lines}
    if not names:
        raise ConvertError(f"split file {split_file}: no scene folders")
    return names


def find_sunrgbd(root: Path, split_file: Path | None = None) -> tuple[list[Item], Skipped]:
    """SUN RGB-D scenes under root (the SUNRGBD folder: <sensor>/.../<scene>/{image/*.jpg, depth/*.png,
    intrinsics.txt}), all of them or those listed in `split_file` (e.g. the 5050 test scenes of the
    toolbox's traintestSUNRGBD/allsplit.mat `alltest`, written as text). Key: the scene path.

    Spec: Song et al., SUN RGB-D (CVPR 2015) and its SUNRGBDtoolbox (read3dPoints.m).
    """
    wanted = None if split_file is None else _scene_names(split_file)
    items: list[Item] = []
    skipped: Skipped = []
    for intrinsics in sorted(require_dir(root, "--root").glob("**/intrinsics.txt")):
        scene = intrinsics.parent
        name = scene.relative_to(root).as_posix()
        if wanted is not None and name not in wanted:
            continue
        key = sanitize_key(name)
        images = sorted(scene.glob("image/*.jpg")) + sorted(scene.glob("image/*.png"))
        depths = sorted(scene.glob("depth/*.png"))
        if len(images) != 1 or len(depths) != 1:
            skipped.append((key, f"{len(images)} image(s) and {len(depths)} depth map(s), expected one each"))
        else:
            items.append(Item(key, partial(load_sunrgbd, images[0], depths[0], intrinsics)))
    return items, skipped


# ----------------------------------------------------------------------------- Spring

SPRING_BASELINE_M = 0.065
"""Spring's stereo baseline (Mehl et al., CVPR 2023: 6.5 cm)."""


def read_spring_disparity(path: Path) -> np.ndarray:
    """A Spring .dsp5 disparity (HDF5 dataset `disparity`, at twice the image resolution) at the image's
    resolution: every second pixel of every second row, values unchanged (they are in image pixels)."""
    with import_h5py().File(path, "r") as f:
        if "disparity" not in f:
            raise ValueError("no 'disparity' dataset")
        return np.asarray(f["disparity"][()])[::2, ::2]


def read_spring_focals(path: Path) -> list[float]:
    """fx of every frame from a Spring cam_data/intrinsics.txt (one `fx fy cx cy` line per frame)."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not rows or any(len(row) != 4 for row in rows):
        raise ValueError("expected one 'fx fy cx cy' line per frame")
    return [positive_number(float(row[0]), "fx") for row in rows]


def load_spring(image: Path, disparity: Path, f_px: float) -> Loaded:
    """One Spring left frame: depth = fx * 0.065 m / disparity (0 or NaN disparity, e.g. sky: invalid)."""
    disp = read_or_skip(disparity, read_spring_disparity)
    return Loaded(read_or_skip(image, read_image), _depth_from_disparity(disp, f_px * SPRING_BASELINE_M), f_px)


def find_spring(root: Path) -> tuple[list[Item], Skipped]:
    """Spring scenes (the train split: the test split has no public ground truth): root/<scene>/
    {frame_left/frame_left_NNNN.png, disp1_left/disp1_left_NNNN.dsp5, cam_data/intrinsics.txt}.

    Spec: Mehl et al., "Spring: A High-Resolution High-Detail Dataset and Benchmark for Scene Flow, Optical
    Flow and Stereo" (CVPR 2023) and spring-benchmark.org: disparity at 2x the 1920x1080 images, baseline
    6.5 cm, frame NNNN's intrinsics on line NNNN of intrinsics.txt. The 2x ground truth is stored at the
    image's resolution (`read_spring_disparity`); the paper does not say how it handled it.
    """
    items: list[Item] = []
    skipped: Skipped = []
    for scene in sorted(p for p in require_dir(root, "--root").iterdir() if (p / "frame_left").is_dir()):
        frames = sorted(scene.glob("frame_left/frame_left_*.png"))
        keys = [sanitize_key(f"{scene.name}_{p.stem.removeprefix('frame_left_')}") for p in frames]
        intrinsics = scene / "cam_data" / "intrinsics.txt"
        try:
            focals = read_or_skip(intrinsics, read_spring_focals)
        except SkipSample as err:
            skipped += skip_group(keys, intrinsics.parent, err)[1]
            continue
        for key, frame in zip(keys, frames):
            number = frame.stem.removeprefix("frame_left_")
            disparity = scene / "disp1_left" / f"disp1_left_{number}.dsp5"
            index = int(number) - 1 if number.isdigit() else -1
            reason = first_missing([disparity]) or (None if 0 <= index < len(focals) else
                                               f"no line {number} in {intrinsics}")
            if reason:
                skipped.append((key, reason))
            else:
                items.append(Item(key, partial(load_spring, frame, disparity, focals[index])))
    return items, skipped


# ----------------------------------------------------------------------------- focal-length photo folders


def load_focal_photo(image: Path) -> Loaded:
    """A photo without depth whose ground truth is its EXIF focal length (see dp_train/utils/exif.py)."""
    try:
        f_px = focal_px_from_exif(image)
    except NoFocal as err:
        raise SkipSample(f"{image.name}: {err}") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is one skipped sample
        raise SkipSample(f"cannot read {image.name}: {err}") from None
    return Loaded(read_or_skip(image, read_image), None, f_px)


def find_focal_photos(root: Path) -> tuple[list[Item], Skipped]:
    """Every image under root (recursively), a focal-length test sample keyed by its path: DDDP, FiveK,
    PPR10K, RAISE, SPAQ and ZOOM as photo folders (their raw files converted to JPEG/PNG with the EXIF kept).
    Photos without an EXIF 35 mm-equivalent focal length are skipped, naming the file."""
    photos = sorted(p for p in require_dir(root, "--root").rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    return [Item(sanitize_key(p.relative_to(root).with_suffix("").as_posix()), partial(load_focal_photo, p))
            for p in photos], []


# ----------------------------------------------------------------------------- exclusion lists


def read_exclusions(path: Path) -> set[str]:
    """Sample names (file stems, or keys) listed one per line in an exclusion file; a line starting with '#' is
    a comment (only there: DIS-5k's own names contain '#')."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ConvertError(f"cannot read exclusion list {path}: {err.strerror or err}") from None
    return {line.strip() for line in lines if not line.lstrip().startswith("#")} - {""}


def exclude(found: tuple[list[Item], Skipped], path: Path) -> tuple[list[Item], Skipped]:
    """Drop the items an exclusion list names (by key, or by the file stem the key was made from), listing
    them as skipped with the reason: e.g. the DIS-5k samples whose object is occluded, which the paper removes
    by hand (Sec. 4) without publishing the list."""
    names = read_exclusions(path)
    keys = {sanitize_key(name) for name in names}
    items, skipped = found
    kept = [item for item in items if item.key not in keys]
    dropped = [(item.key, f"excluded by {path}") for item in items if item.key in keys]
    return kept, skipped + dropped
