"""Tiny dataset folders in the public benchmarks' on-disk formats, written straight from each format's public
specification (struct / NumPy `tofile` for binary formats, OpenCV for PNG and JPEG, Pillow for EXIF), for the
converter tests (tests/unit/convert/test_convert_public.py, tests/unit/convert/test_convert_benchmarks.py) and the journeys that convert
them and evaluate on them (tests/integration/test_journeys.py).

Images are H x W = 6 x 8 and asymmetric, so that a transposition or flip fails.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

H, W = 6, 8
SINTEL_TAG = 202021.25
ROWS, COLS = np.mgrid[0:H, 0:W]


def pattern(seed: int = 0) -> np.ndarray:
    """HxWx3 uint8 RGB: red grows along x, green along y (no symmetry survives a transpose)."""
    return np.stack([COLS * 30 + seed, ROWS * 40 + seed, np.full_like(COLS, 9 * seed)], -1).astype(np.uint8)


def depth_map(base: float = 1.0) -> np.ndarray:
    """HxW float64 depth that changes differently along x and y."""
    return base + 0.25 * COLS + 1.5 * ROWS


def write_png(path: Path, array: np.ndarray) -> None:
    """8-bit RGB or 8/16-bit gray PNG (or JPEG by extension) via OpenCV, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = array[..., ::-1] if array.ndim == 3 else array  # OpenCV wants BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if path.suffix.lower() in (".jpg", ".jpeg") else []
    assert cv2.imwrite(str(path), np.ascontiguousarray(pixels), params)


def write_text(path: Path, text: str) -> None:
    """Write text, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ----------------------------------------------------------------------------- Middlebury 2014


def write_pfm(path: Path, array: np.ndarray) -> None:
    """Grayscale PFM: 'Pf', 'W H', scale -1 (little-endian), rows from bottom to top."""
    with open(path, "wb") as f:
        f.write(f"Pf\n{array.shape[1]} {array.shape[0]}\n-1.0\n".encode())
        np.flipud(array).astype("<f4").tofile(f)


def write_middlebury(folder: Path, f: float, disparity: np.ndarray, seed: int, calib_extra: str = "doffs=5.5\n") -> None:
    """One Middlebury 2014 scene: im0.png, disp0.pfm and calib.txt (baseline 190 mm)."""
    write_png(folder / "im0.png", pattern(seed))
    write_pfm(folder / "disp0.pfm", disparity)
    write_text(folder / "calib.txt", f"cam0=[{f} 0 3.5; 0 {f} 2.5; 0 0 1]\ncam1=[{f} 0 9; 0 {f} 2.5; 0 0 1]\n"
               f"{calib_extra}baseline=190.0\nwidth={W}\nheight={H}\nndisp=64\nisint=0\n")


# ----------------------------------------------------------------------------- MPI Sintel


def write_dpt(path: Path, depth: np.ndarray, tag: float = SINTEL_TAG) -> None:
    """.dpt: float32 tag, int32 width, int32 height, float32 depth row-major."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.array([tag], "<f4").tofile(f)
        np.array([depth.shape[1], depth.shape[0]], "<i4").tofile(f)
        depth.astype("<f4").tofile(f)


def write_cam(path: Path, intrinsics: np.ndarray) -> None:
    """.cam: float32 tag, 3x3 intrinsics and 3x4 extrinsics as float64."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.array([SINTEL_TAG], "<f4").tofile(f)
        intrinsics.astype("<f8").tofile(f)
        np.eye(3, 4).astype("<f8").tofile(f)


def write_sintel_frame(root: Path, scene: str, frame: str, seed: int, f_px: float, depth: np.ndarray,
                       tag: float = SINTEL_TAG) -> None:
    """One frame of Sintel's training layout under `root`: final/ image, camdata_left/ camera (focal `f_px`, centre
    (4, 3)) and depth/ map (`tag` other than SINTEL_TAG makes the .dpt unreadable)."""
    write_png(root / "final" / scene / f"{frame}.png", pattern(seed))
    write_cam(root / "camdata_left" / scene / f"{frame}.cam", np.array([[f_px, 0, 4], [0, f_px, 3], [0, 0, 1]]))
    write_dpt(root / "depth" / scene / f"{frame}.dpt", depth, tag=tag)


# ----------------------------------------------------------------------------- DIS5K and matting sets


def write_matte_pair(split: Path, stem: str, seed: int, alpha: np.ndarray, image_dir: str = "im",
                     alpha_dir: str = "gt", image_ext: str = ".png") -> None:
    """An image and its 8-bit matte with the same stem: DIS5K's `im/` + `gt/` (the defaults), or a matting set's
    `image/` + `alpha/`."""
    write_png(split / image_dir / f"{stem}{image_ext}", pattern(seed))
    write_png(split / alpha_dir / f"{stem}.png", alpha)


# ----------------------------------------------------------------------------- focal-length photo folders


def write_photo(path: Path, seed: int, focal_35mm: int | None, pixels: np.ndarray | None = None) -> None:
    """A JPEG (`pattern(seed)`, or `pixels`) carrying (or not) EXIF FocalLengthIn35mmFilm, as cameras write it
    (Exif sub-IFD)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if focal_35mm is not None:
        exif.get_ifd(0x8769)[0xA405] = focal_35mm
    Image.fromarray(pattern(seed) if pixels is None else pixels).save(path, "JPEG", quality=100, exif=exif)
