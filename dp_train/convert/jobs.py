"""make_shards' jobs: matching images, depth maps and masks by file stem into Jobs (find_jobs), the
settings shared by a run (Options, UNITS) and converting one Job into an encoded sample (convert_one).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dp_train.convert.errors import SkipSample
from dp_train.convert.readers import (
    DEPTH_EXTS,
    IMAGE_EXTS,
    MASK_EXTS,
    read_depth,
    read_image,
    read_mask,
    read_or_skip,
)
from dp_train.convert.report import SampleStats, sample_stats
from dp_train.convert.runner import Result, safe_result
from dp_train.shards import SampleMeta, encode_sample, make_sample, sanitize_key
from dp_train.utils.exif import NoFocal, focal_px_from_exif

UNITS: dict[str, tuple[bool, str, float]] = {
    # --units: (metric, depth_kind, source units per metre)
    "m": (True, "depth", 1.0),
    "cm": (True, "depth", 100.0),
    "mm": (True, "depth", 1000.0),
    "disparity": (False, "disparity", 1.0),
    "relative": (False, "depth", 1.0),
}


@dataclass(frozen=True)
class Options:
    """Settings shared by every sample of a run."""

    dataset: str
    units: str | None
    """None: a focal-only photo set (no depth maps)."""
    synthetic: bool
    sparse: bool
    png_scale: float | None
    depth_format: str
    image_format: str
    image_only: bool = False
    """Without depth: keep photos whose focal length is unknown (f_px null), for distillation (`model.teacher`)."""


@dataclass(frozen=True)
class Job:
    """One image/depth pair to convert (depth None: a photo of a focal-only set)."""

    stem: str
    key: str
    image: Path
    depth: Path | None
    mask: Path | None
    f_px: float | None


def files_by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, list[Path]]:
    """Map file stem -> files in `folder` (not recursive) with one of `exts`."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in exts:
            found.setdefault(path.stem, []).append(path)
    return found


def count_problem(what: str, files: list[Path]) -> str | None:
    """Why a stem cannot be used when it has not exactly one `what` file, else None."""
    if not files:
        return f"no {what} file"
    if len(files) > 1:
        return f"several {what} files: {', '.join(p.name for p in files)}"
    return None


def find_jobs(
    images_dir: Path,
    depth_dir: Path | None,
    mask_dir: Path | None,
    f_px: float | None,
    focal: dict[str, float] | None,
    focal_name: str = "the focal file",
) -> tuple[list[Job], list[tuple[str, str]]]:
    """Match files by stem: (jobs in sorted stem order, [(stem, reason)] for unusable stems). Without
    `depth_dir` every image is a job of a focal-only photo set."""
    images = files_by_stem(images_dir, IMAGE_EXTS)
    depths = files_by_stem(depth_dir, DEPTH_EXTS) if depth_dir else {}
    masks = files_by_stem(mask_dir, MASK_EXTS) if mask_dir else {}
    jobs: list[Job] = []
    skipped: list[tuple[str, str]] = []
    key_owner: dict[str, str] = {}
    for stem in sorted(images.keys() | depths.keys()):
        key = sanitize_key(stem)
        candidates = {"image": images.get(stem, [])}
        if depth_dir:
            candidates["depth"] = depths.get(stem, [])
        if mask_dir:
            candidates["mask"] = masks.get(stem, [])
        reason = next(filter(None, (count_problem(w, f) for w, f in candidates.items())), None)
        if reason is None and focal is not None and stem not in focal:
            reason = f"no focal length in {focal_name}"
        if reason is None and key in key_owner:
            reason = f"sample key {key!r} collides with stem {key_owner[key]!r}"
        if reason:
            skipped.append((stem, reason))
            continue
        key_owner[key] = stem
        mask = candidates["mask"][0] if mask_dir else None
        jobs.append(Job(stem, key, images[stem][0], depths[stem][0] if depth_dir else None, mask,
                        focal[stem] if focal is not None else f_px))
    return jobs, skipped


def convert_one(job: Job, opts: Options) -> Result:
    """Load, validate and encode one sample (runs in a worker process)."""
    return safe_result(job.stem, functools.partial(_convert, job, opts))


def _convert(job: Job, opts: Options) -> tuple[dict[str, bytes | str], SampleStats]:
    """convert_one without the error handling."""
    if job.depth is None:
        return _convert_photo(job, opts)
    image = read_or_skip(job.image, read_image)
    depth = read_or_skip(job.depth, functools.partial(read_depth, png_scale=opts.png_scale))
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    h, w = image.shape[:2]
    if depth.ndim != 2:
        raise SkipSample(f"depth has shape {depth.shape}, expected a single channel")
    if depth.shape != (h, w):
        raise SkipSample(f"size mismatch: image {w}x{h}, depth {depth.shape[1]}x{depth.shape[0]}")
    mask = read_or_skip(job.mask, read_mask) if job.mask else None
    if mask is not None and mask.shape != (h, w):
        raise SkipSample(f"size mismatch: image {w}x{h}, mask {mask.shape[1]}x{mask.shape[0]}")
    metric, depth_kind, per_metre = UNITS[opts.units]
    meta = SampleMeta(opts.dataset, job.f_px, metric, opts.synthetic, opts.sparse, depth_kind)
    sample = make_sample(job.key, image, (depth / per_metre).astype(np.float32), meta, mask)
    if not sample.valid.any():
        n_negative = int(np.count_nonzero(depth < 0))
        hint = f"; {n_negative} negative values: sign convention?" if n_negative else ""
        raise SkipSample(f"no valid depth pixels (all non-finite, <= 0 or masked){hint}")
    raw = encode_sample(sample, opts.depth_format, opts.image_format)
    return raw, sample_stats(sample.depth[sample.valid], w, h, job.f_px)


def _convert_photo(job: Job, opts: Options) -> tuple[dict[str, bytes | str], SampleStats]:
    """A photo of a focal-only set: the image, its focal length and an all-invalid depth map (an image-only set
    keeps a photo without a focal length, f_px null)."""
    image = read_or_skip(job.image, read_image)
    h, w = image.shape[:2]
    f_px = job.f_px
    if f_px is None:
        try:
            f_px = focal_px_from_exif(job.image)
        except NoFocal as err:
            if not opts.image_only:
                raise SkipSample(str(err)) from None
    meta = SampleMeta(opts.dataset, f_px, False, opts.synthetic, opts.sparse, depth_kind="none")
    sample = make_sample(job.key, image, np.zeros((h, w), np.float32), meta)
    raw = encode_sample(sample, opts.depth_format, opts.image_format)
    return raw, sample_stats(np.zeros(0, np.float32), w, h, f_px)
