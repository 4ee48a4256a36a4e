"""`python -m dp_train make_shards`: an in-house dataset -> webdataset shards (tools/make_shards.py wraps it).

Input: a folder of images and a folder of depth maps matched by file stem (flat, not
recursive), optionally a folder of validity masks (nonzero = valid) and focal lengths.
Without `--depth`, a focal-only photo set (the FOV stage's, Sec. 3.3 of the paper): every
sample is a photo with its focal length (from --f-px / --focal-file, else the photo's EXIF,
see dp_train/utils/exif.py) and an all-invalid depth map; photos without one are skipped, unless
`--image-only` (an image-only set for distillation, `model.teacher`: kept with f_px null).
Depth maps may be .npy, 16-bit .png (value * --png-scale), .pfm or .exr (needs the
optional OpenEXR package). Every sample is validated; bad ones are skipped and listed
in `{prefix}.skipped.txt`; a summary goes to stdout and `{prefix}.report.json`.

This module holds the command line and the driver (checking the arguments, running the jobs, the
report); the pieces live beside it: `jobs` (matching files into jobs, converting one), `readers`,
`report`, `runner` (parallel run, writing) and `errors`.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from dp_train.convert.errors import ConvertError
from dp_train.convert.jobs import UNITS, Job, Options, convert_one, find_jobs
from dp_train.convert.readers import IMAGE_EXTS, import_openexr, read_focal_file
from dp_train.convert.report import Report, save_report, unusual_statistics
from dp_train.convert.runner import check_output, collect_results, parallel_results
from dp_train.shards import DEPTH_FORMATS, IMAGE_FORMATS, ShardWriter
from dp_train.utils.commands import command_main, run_reporting_errors

HELP = "your folder of images + depth maps (or photos with a focal length) -> shards"
DESCRIPTION = ("Convert a folder of images + depth maps (matched by file stem), or of photos with a focal length only "
               "(no --depth: the FOV stage's photo sets, focal from EXIF), into webdataset shards for dp_train. "
               "See shards/README.md.")


def _check_dir(path: str | None, flag: str) -> Path | None:
    """path as a Path, or ConvertError if it is given but not a folder."""
    if path is None:
        return None
    folder = Path(path)
    if not folder.is_dir():
        raise ConvertError(f"{flag} {folder}: no such folder")
    return folder


def _prepare(args: argparse.Namespace) -> tuple[Options, list[Job], list[tuple[str, str]]]:
    """Check the arguments and inputs and match the files; raises ConvertError."""
    images_dir, depth_dir = _check_dir(args.images, "--images"), _check_dir(args.depth, "--depth")
    mask_dir = _check_dir(args.mask_dir, "--mask-dir")
    if depth_dir is not None and args.units is None:
        raise ConvertError("--units is required with --depth (m, cm, mm, disparity or relative)")
    if depth_dir is None and (args.units, args.mask_dir, args.png_scale) != (None, None, None):
        raise ConvertError("--units, --mask-dir and --png-scale describe depth maps: a photo set (no --depth) "
                           "has none")
    if depth_dir is not None and args.image_only:
        raise ConvertError("--image-only writes a set without depth: drop --depth, or --image-only")
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
            import_openexr()
        except ImportError as e:
            raise ConvertError(str(e)) from None
    opts = Options(args.dataset, args.units, args.synthetic, args.sparse, args.png_scale,
                   args.depth_format, args.image_format, args.image_only)
    return opts, jobs, skipped


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The make_shards options."""
    p.description = DESCRIPTION
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
    p.add_argument("--image-only", action="store_true",
                   help="without --depth: keep photos without a focal length (f_px null) instead of skipping them: "
                        "an image-only set that a teacher labels (model.teacher, docs/distillation.md)")
    p.add_argument("--synthetic", action="store_true", help="rendered data (exact depth)")
    p.add_argument("--sparse", action="store_true", help="LiDAR-like depth: most pixels invalid")
    p.add_argument("--samples-per-shard", type=int, default=1000, metavar="N")
    p.add_argument("--depth-format", choices=DEPTH_FORMATS, default="npy16")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpg",
                   help="jpg (quality 95) or png (lossless)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                   help="decoding/validation processes (default: min(8, CPUs))")


def run(args: argparse.Namespace) -> int:
    """Run make_shards: exit code 0 (ok), 1 (nothing written) or 2 (bad arguments or inputs, one `error:` line)."""
    return run_reporting_errors(convert, args)


def main(argv: Sequence[str] | None = None) -> int:
    """`dp_train make_shards ARGV` without loading the Lightning command line (tools/make_shards.py, tests)."""
    return command_main("make_shards", add_arguments, run, argv)
