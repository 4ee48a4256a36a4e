"""Convert an in-house dataset into webdataset shards (the logic of tools/make_shards.py).

Input: a folder of images and a folder of depth maps matched by file stem (flat, not
recursive), optionally a folder of validity masks (nonzero = valid) and focal lengths.
Without `--depth`, a focal-only photo set (the FOV stage's, Sec. 3.3 of the paper): every
sample is a photo with its focal length (from --f-px / --focal-file, else the photo's EXIF,
see dp_train/exif.py) and an all-invalid depth map; photos without one are skipped.
Depth maps may be .npy, 16-bit .png (value * --png-scale), .pfm or .exr (needs the
optional OpenEXR package). Every sample is validated; bad ones are skipped and listed
in `{prefix}.skipped.txt`; a summary goes to stdout and `{prefix}.report.json`.
"""

from __future__ import annotations

import argparse
import csv
import functools
import glob
import json
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from dp_train.exif import NoFocal, focal_px_from_exif
from dp_train.data.schema import (
    DEPTH_FORMATS,
    IMAGE_FORMATS,
    SampleMeta,
    ShardWriter,
    encode_sample,
    load_png16,
    make_sample,
    sanitize_key,
    write_text_atomic,
)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEPTH_EXTS = (".npy", ".png", ".pfm", ".exr")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".npy")
UNITS: dict[str, tuple[bool, str, float]] = {
    # --units: (metric, depth_kind, source units per metre)
    "m": (True, "depth", 1.0),
    "cm": (True, "depth", 100.0),
    "mm": (True, "depth", 1000.0),
    "disparity": (False, "disparity", 1.0),
    "relative": (False, "depth", 1.0),
}
LOG10_LO, LOG10_HI, BINS_PER_DECADE = -6, 6, 200  # depth histogram for percentiles (~1.2% bins)
N_BINS = (LOG10_HI - LOG10_LO) * BINS_PER_DECADE
EXR_CHANNELS = ("z", "depth", "y", "r")  # preferred depth channel names, in order


class ConvertError(Exception):
    """A problem with the inputs as a whole: reported as one `error:` line, exit code 2."""


class SkipSample(Exception):
    """A problem with one sample: it is skipped and listed with this reason."""


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


@dataclass(frozen=True)
class Job:
    """One image/depth pair to convert (depth None: a photo of a focal-only set)."""

    stem: str
    key: str
    image: Path
    depth: Path | None
    mask: Path | None
    f_px: float | None


@dataclass
class SampleStats:
    """What the report needs from one converted sample."""

    width: int
    height: int
    n_valid: int
    d_min: float
    d_max: float
    hist: np.ndarray
    f_px: float | None


@dataclass
class Result:
    """A worker's answer for one Job: the encoded sample, or the reason it was skipped."""

    stem: str
    raw: dict[str, bytes | str] | None
    reason: str | None
    stats: SampleStats | None


# ----------------------------------------------------------------------------- readers


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


def _import_openexr() -> Any:
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
    openexr = _import_openexr()
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


# ----------------------------------------------------------------------------- matching


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


# ----------------------------------------------------------------------------- per sample


def read_or_skip(path: Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
    """reader(path), turning any failure into SkipSample naming the file."""
    try:
        return reader(path)
    except Exception as e:
        raise SkipSample(f"cannot read {path.name}: {e}") from None


def safe_result(stem: str, work: Callable[[], tuple[dict[str, bytes | str], SampleStats]]) -> Result:
    """Run one sample's conversion; any failure becomes a skipped Result carrying the reason,
    so that one bad file never stops a long conversion."""
    try:
        raw, stats = work()
    except SkipSample as e:
        return Result(stem, None, str(e), None)
    except Exception as e:
        return Result(stem, None, f"{type(e).__name__}: {e}", None)
    return Result(stem, raw, None, stats)


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
    """A photo of a focal-only set: the image, its focal length and an all-invalid depth map."""
    image = read_or_skip(job.image, read_image)
    h, w = image.shape[:2]
    f_px = job.f_px
    if f_px is None:
        try:
            f_px = focal_px_from_exif(job.image)
        except NoFocal as err:
            raise SkipSample(str(err)) from None
    meta = SampleMeta(opts.dataset, f_px, False, opts.synthetic, opts.sparse)
    sample = make_sample(job.key, image, np.zeros((h, w), np.float32), meta)
    raw = encode_sample(sample, opts.depth_format, opts.image_format)
    return raw, sample_stats(np.zeros(0, np.float32), w, h, f_px)


def sample_stats(values: np.ndarray, width: int, height: int, f_px: float | None) -> SampleStats:
    """Statistics of one sample's valid depth values (none: a sample without depth)."""
    if not values.size:
        return SampleStats(width, height, 0, math.inf, -math.inf, np.zeros(N_BINS, np.int64), f_px)
    log = np.log10(values.astype(np.float64))
    bins = np.clip(((log - LOG10_LO) * BINS_PER_DECADE).astype(np.int64), 0, N_BINS - 1)
    hist = np.bincount(bins, minlength=N_BINS)
    return SampleStats(width, height, values.size, float(values.min()), float(values.max()), hist, f_px)


# ----------------------------------------------------------------------------- report


def _sig(x: float) -> float:
    """x rounded to 4 significant digits."""
    return float(f"{x:.4g}")


def _span(values: list[float]) -> dict[str, float] | None:
    """{"min", "max"} of values (4 significant digits), None if empty."""
    return {"min": _sig(min(values)), "max": _sig(max(values))} if values else None


def hfov_deg(width: int, f_px: float) -> float:
    """Horizontal field of view in degrees of a pinhole camera: 2 atan(W / 2f)."""
    return math.degrees(2 * math.atan(width / (2 * f_px)))


class Report:
    """Accumulates SampleStats and summarises them."""

    def __init__(self) -> None:
        self.hist = np.zeros(N_BINS, np.int64)
        self.d_min, self.d_max = math.inf, -math.inf
        self.valid_shares: list[float] = []
        self.focals: list[float] = []
        self.fovs: list[float] = []
        self.sizes: set[tuple[int, int]] = set()

    def add(self, s: SampleStats) -> None:
        """Fold in one sample."""
        self.hist += s.hist
        self.d_min, self.d_max = min(self.d_min, s.d_min), max(self.d_max, s.d_max)
        self.valid_shares.append(s.n_valid / (s.width * s.height))
        self.sizes.add((s.width, s.height))
        if s.f_px is not None:
            self.focals.append(s.f_px)
            self.fovs.append(hfov_deg(s.width, s.f_px))

    def percentile(self, q: float) -> float:
        """Approximate q-th percentile of all valid depth values (to one histogram bin)."""
        cum = np.cumsum(self.hist)
        i = int(np.searchsorted(cum, max(1.0, q / 100 * cum[-1])))
        value = 10 ** (LOG10_LO + (i + 0.5) / BINS_PER_DECADE)
        return min(max(value, self.d_min), self.d_max)

    def summary(self) -> dict[str, Any]:
        """Depth, valid-share, focal and FOV statistics (None where there is no data)."""
        if not self.valid_shares:
            return {"depth": None, "mean_valid_share": None, "f_px": None, "hfov_deg": None,
                    "image_sizes": []}
        depth = {"min": _sig(self.d_min), "p1": _sig(self.percentile(1)),
                 "p50": _sig(self.percentile(50)), "p99": _sig(self.percentile(99)),
                 "max": _sig(self.d_max)}
        return {
            "depth": depth,
            "mean_valid_share": _sig(float(np.mean(self.valid_shares))),
            "f_px": _span(self.focals),
            "hfov_deg": _span(self.fovs),
            "image_sizes": [f"{w}x{h}" for w, h in sorted(self.sizes)],
        }


def unusual_statistics(summary: dict[str, Any], metric: bool) -> list[str]:
    """Warnings about unusual statistics (wrong --units or focal length)."""
    hints = []
    depth, fov = summary["depth"], summary["hfov_deg"]
    if metric and depth and not 0.1 <= depth["p50"] <= 500:
        hints.append(f"median depth {depth['p50']} m is unusual: check --units")
    if fov and (fov["min"] < 10 or fov["max"] > 160):
        hints.append(f"horizontal FOV {fov['min']}-{fov['max']} deg is unusual: check the focal lengths")
    return hints


def _print_report(report: dict[str, Any], skipped: list[tuple[str, str]], max_listed: int = 20) -> None:
    """Human-readable closing report on stdout."""
    r = report
    unit = "m" if r["metric"] else r["units"]
    print(f"dataset {r['dataset']!r}: {r['samples_written']} samples written in {r['shards']} shard(s), "
          f"{r['samples_skipped']} skipped")
    if r["depth"]:
        d = r["depth"]
        print(f"  depth [{unit}]: min {d['min']}  p1 {d['p1']}  p50 {d['p50']}  p99 {d['p99']}  max {d['max']}")
        print(f"  mean valid-pixel share: {100 * r['mean_valid_share']:.1f}%")
        print(f"  image sizes: {', '.join(r['image_sizes'])}")
    if r["f_px"]:
        f, fov = r["f_px"], r["hfov_deg"]
        print(f"  focal length: {f['min']} - {f['max']} px -> horizontal FOV {fov['min']} - {fov['max']} deg")
    else:
        print("  focal length: unknown (no --f-px / --focal-file)")
    for hint in r["warnings"]:
        print(f"  warning: {hint}")
    for stem, reason in skipped[:max_listed]:
        print(f"  skipped {stem}: {reason}")
    if len(skipped) > max_listed:
        print(f"  ... {len(skipped) - max_listed} more skipped")
    print(f"  index: {r['index']}\n  report: {r['report']}\n  skipped list: {r['skipped_list']}")


# ----------------------------------------------------------------------------- driver


def _check_dir(path: str | None, flag: str) -> Path | None:
    """path as a Path, or ConvertError if it is given but not a folder."""
    if path is None:
        return None
    folder = Path(path)
    if not folder.is_dir():
        raise ConvertError(f"{flag} {folder}: no such folder")
    return folder


def check_output(out: Path, prefix: str) -> None:
    """ConvertError unless shards `prefix` can be written into `out` without replacing any."""
    if "/" in prefix or prefix.startswith("."):
        raise ConvertError(f"--prefix {prefix!r} must be a plain file-name prefix")
    if out.exists() and not out.is_dir():
        raise ConvertError(f"--out {out} exists and is not a folder")
    pattern = glob.escape(prefix)
    existing = sorted(out.glob(f"{pattern}.index.json")) + sorted(out.glob(f"{pattern}-*.tar"))
    if existing:
        raise ConvertError(f"{existing[0]} already exists: choose another --prefix or delete the old shards")


def _prepare(args: argparse.Namespace) -> tuple[Options, list[Job], list[tuple[str, str]]]:
    """Check the arguments and inputs and match the files; raises ConvertError."""
    images_dir, depth_dir = _check_dir(args.images, "--images"), _check_dir(args.depth, "--depth")
    mask_dir = _check_dir(args.mask_dir, "--mask-dir")
    if depth_dir is not None and args.units is None:
        raise ConvertError("--units is required with --depth (m, cm, mm, disparity or relative)")
    if depth_dir is None and (args.units, args.mask_dir, args.png_scale) != (None, None, None):
        raise ConvertError("--units, --mask-dir and --png-scale describe depth maps: a photo set (no --depth) "
                           "has none")
    if args.units is not None and UNITS[args.units][0] and args.f_px is None and args.focal_file is None:
        raise ConvertError(f"--units {args.units} is metric depth, which training uses only with a focal length: "
                           "give --f-px or --focal-file")
    for flag, value in (("--f-px", args.f_px), ("--png-scale", args.png_scale)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConvertError(f"{flag} must be positive, got {value}")
    if args.samples_per_shard < 1 or args.workers < 1:
        raise ConvertError("--samples-per-shard and --workers must be >= 1")
    check_output(Path(args.out), args.prefix or args.dataset)
    focal = read_focal_file(Path(args.focal_file)) if args.focal_file else None
    jobs, skipped = find_jobs(images_dir, depth_dir, mask_dir, args.f_px, focal, str(args.focal_file))
    if not jobs and depth_dir is None:
        raise ConvertError(f"no images in {images_dir} ({', '.join(IMAGE_EXTS)})")
    if not jobs:
        raise ConvertError(f"no usable image/depth pairs: no image in {images_dir} has a depth map "
                           f"with the same file stem in {depth_dir} ({len(skipped)} unmatched files)")
    suffixes = {j.depth.suffix.lower() for j in jobs if j.depth is not None}
    if ".png" in suffixes and args.png_scale is None:
        raise ConvertError(f"depth maps in {depth_dir} are 16-bit PNGs: give --png-scale "
                           "(depth units per PNG count, e.g. 0.001 with --units m for millimetre PNGs)")
    if ".exr" in suffixes:
        try:
            _import_openexr()
        except ImportError as e:
            raise ConvertError(str(e)) from None
    opts = Options(args.dataset, args.units, args.synthetic, args.sparse, args.png_scale,
                   args.depth_format, args.image_format)
    return opts, jobs, skipped


def parallel_results(work: Callable[[Any], Result], jobs: Sequence[Any], workers: int) -> Iterator[Result]:
    """work(job) for every job, in order, in `workers` processes (in this one when 1); `work`
    and the jobs must be picklable (module-level functions, partials, dataclasses)."""
    processes = min(workers, len(jobs))
    if processes <= 1:
        yield from map(work, jobs)
        return
    with multiprocessing.get_context().Pool(processes) as pool:
        yield from pool.imap(work, jobs, chunksize=1)


def collect_results(
    results: Iterable[Result], writer: ShardWriter, report: Report, skipped: list[tuple[str, str]]
) -> None:
    """Write every converted sample and fold its statistics into `report`; list the others in `skipped`."""
    for res in results:
        if res.raw is None:
            skipped.append((res.stem, str(res.reason)))
        else:
            writer.write_encoded(res.raw)
            report.add(res.stats)


def save_report(result: dict[str, Any], skipped: list[tuple[str, str]]) -> int:
    """Write the skip list and report named in `result`, print the summary; 1 if nothing was written."""
    write_text_atomic(result["skipped_list"], "".join(f"{s}\t{r}\n" for s, r in skipped))
    write_text_atomic(result["report"], json.dumps(result, indent=2) + "\n")
    _print_report(result, skipped)
    if result["samples_written"] == 0:
        print(f"error: every sample was skipped (see {result['skipped_list']})", file=sys.stderr)
        return 1
    return 0


def convert(args: argparse.Namespace) -> int:
    """Run a conversion: 0 on success, 1 if no sample survived; ConvertError on bad input."""
    opts, jobs, skipped = _prepare(args)
    out, prefix = Path(args.out), args.prefix or args.dataset
    report = Report()
    with ShardWriter(out, prefix, max_samples=args.samples_per_shard,
                     depth_format=opts.depth_format, image_format=opts.image_format) as writer:
        results = parallel_results(functools.partial(convert_one, opts=opts), jobs, args.workers)
        collect_results(tqdm(results, total=len(jobs), unit="sample", desc=opts.dataset, disable=None),
                        writer, report, skipped)
    skipped.sort()
    metric, depth_kind, _ = UNITS[opts.units] if opts.units else (False, None, 1.0)
    summary = report.summary()
    if opts.units is None:
        summary |= {"depth": None, "mean_valid_share": None}
    result = {
        "dataset": opts.dataset, "units": opts.units, "metric": metric, "depth_kind": depth_kind,
        "synthetic": opts.synthetic, "sparse": opts.sparse,
        "samples_written": writer.num_samples, "samples_skipped": len(skipped),
        "shards": len(writer.shards), **summary, "warnings": unusual_statistics(summary, metric),
        "index": str(writer.index_path), "report": str(out / f"{prefix}.report.json"),
        "skipped_list": str(out / f"{prefix}.skipped.txt"),
    }
    return save_report(result, skipped)


def build_parser() -> argparse.ArgumentParser:
    """The make_shards command line."""
    p = argparse.ArgumentParser(
        prog="make_shards",
        description="Convert a folder of images + depth maps (matched by file stem), or of photos with a "
                    "focal length only (no --depth: the FOV stage's photo sets, focal from EXIF), into "
                    "webdataset shards for dp_train. See shards/README.md.",
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of RGB images")
    p.add_argument("--depth", metavar="DIR",
                   help="folder of depth maps: .npy, 16-bit .png (needs --png-scale), .pfm, .exr; without it, "
                        "a focal-only photo set: f_px from --f-px / --focal-file, else each photo's EXIF "
                        "(35 mm equivalent, else focal length and sensor resolution); photos without are skipped")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the shards")
    p.add_argument("--dataset", required=True, metavar="NAME", help="dataset name stored in every sample")
    p.add_argument("--prefix", metavar="NAME", help="shard file prefix (default: --dataset)")
    p.add_argument("--units", choices=list(UNITS),
                   help="with --depth: what the depth values are: m, cm, mm (converted to metres), or "
                        "disparity / relative (non-metric sources); no default on purpose")
    focal = p.add_mutually_exclusive_group()
    focal.add_argument("--f-px", type=float, metavar="F", help="focal length in pixels, all images")
    focal.add_argument("--focal-file", metavar="PATH",
                       help="CSV (stem,f_px; optional header naming the column f_px) or JSON {stem: f_px}")
    p.add_argument("--png-scale", type=float, metavar="S",
                   help="16-bit PNG depth: depth (in --units) = PNG value * S")
    p.add_argument("--mask-dir", metavar="DIR", help="optional validity masks by stem (nonzero = valid)")
    p.add_argument("--synthetic", action="store_true", help="rendered data (exact depth)")
    p.add_argument("--sparse", action="store_true", help="LiDAR-like depth: most pixels invalid")
    p.add_argument("--samples-per-shard", type=int, default=1000, metavar="N")
    p.add_argument("--depth-format", choices=DEPTH_FORMATS, default="npy16")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpg",
                   help="jpg (quality 95) or png (lossless)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                   help="decoding/validation processes (default: min(8, CPUs))")
    return p


def run_reporting_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """run(args), turning ConvertError into one `error:` line on stderr and exit code 2."""
    try:
        return run(args)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit code 0 (ok), 1 (nothing written) or 2 (bad arguments or inputs)."""
    return run_reporting_errors(convert, build_parser().parse_args(argv))
