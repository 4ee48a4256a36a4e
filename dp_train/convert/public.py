"""`python -m dp_train convert FORMAT`: a public depth benchmark -> dp_train webdataset shards
(tools/convert/convert_public.py wraps it).

Example:
    python -m dp_train convert middlebury --root data/middlebury2014 --out shards/middlebury --workers 8

Formats, their on-disk layouts and what each stores: docs/convert.md. The readers live beside this module
(their contract in formats.py); shards, report and skip list are those of make_shards (shards/README.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Sequence

from dp_train.convert import benchmarks, formats, hdf5_sets, matting, nuscenes, scans, stereo
from dp_train.convert.errors import ConvertError
from dp_train.shards import DEPTH_FORMATS, IMAGE_FORMATS
from dp_train.utils.commands import command_main, run_reporting_errors

Finder = Callable[[argparse.Namespace, Path], tuple[list[formats.Item], formats.Skipped]]


def _path(value: str | None) -> Path | None:
    """value as a Path, None stays None."""
    return None if value is None else Path(value)


def _matting(args: argparse.Namespace, root: Path) -> tuple[list[formats.Item], formats.Skipped]:
    """find_matting on root/<split> (or root), with the image and alpha folder names given, less the samples
    of the --exclude list."""
    found = matting.find_matting(root / args.split if args.split else root, args.image_dir, args.alpha_dir)
    return found if args.exclude is None else benchmarks.exclude(found, Path(args.exclude))


FINDERS: dict[str, Finder] = {
    "middlebury": lambda a, root: stereo.find_middlebury(root),
    "sintel": lambda a, root: stereo.find_sintel(root, a.render_pass),
    "kitti": lambda a, root: stereo.find_kitti(root, a.split),
    "nyu": lambda a, root: hdf5_sets.find_nyu(root, a.split, _path(a.split_file)),
    "eth3d": lambda a, root: scans.find_eth3d(root),
    "ibims": lambda a, root: scans.find_ibims(root),
    "hypersim": lambda a, root: hdf5_sets.find_hypersim(root, _path(a.camera_csv), a.split, _path(a.split_file)),
    "dis5k": _matting,
    "matting": _matting,
    "booster": lambda a, root: benchmarks.find_booster(root),
    "nuscenes": lambda a, root: nuscenes.find_nuscenes(root, a.version, a.channel),
    "sunrgbd": lambda a, root: benchmarks.find_sunrgbd(root, _path(a.split_file)),
    "spring": lambda a, root: benchmarks.find_spring(root),
    "focal": lambda a, root: benchmarks.find_focal_photos(root),
}
FORMATS = formats.FORMATS | benchmarks.BENCHMARK_FORMATS | {"nuscenes": nuscenes.NUSCENES_FORMAT}
"""What every sample of each format is (metric, synthetic, sparse, has depth)."""
DESCRIPTION = "Convert a public depth benchmark into dp_train shards. Formats and their layouts: docs/convert.md."
HELP = {
    "middlebury": "Middlebury 2014 stereo: <scene>/im0.png, disp0.pfm, calib.txt",
    "sintel": "MPI Sintel depth: depth/<scene>/*.dpt, camdata_left/<scene>/*.cam, final|clean/<scene>/*.png",
    "kitti": "KITTI annotated depth: data_depth_annotated/<split>/<drive>/... + raw <date>/<drive>/image_0X/data",
    "nyu": "NYU Depth v2 labelled set: nyu_depth_v2_labeled.mat (MATLAB v7.3 / HDF5)",
    "eth3d": "ETH3D high-res multi-view: <scene>/images/dslr_images_undistorted + ground_truth_depth",
    "ibims": "iBims-1 (ibims1_core_raw): rgb/, depth/, calib/, mask_invalid/, mask_transp/",
    "hypersim": "Hypersim: <scene>/images/scene_cam_XX_geometry_hdf5/frame.XXXX.depth_meters.hdf5 + images",
    "dis5k": "DIS5K (no depth, boundary recall): <split>/im/*.jpg + <split>/gt/*.png",
    "matting": "matting set (no depth, boundary recall): <split>/image/* + <split>/alpha/*.png",
    "booster": "Booster (train/balanced): <scene>/camera_00/im*.png, disp_00.npy, mask_00.png, calib_00-02.xml",
    "nuscenes": "nuScenes: samples/CAM_*/*.jpg + samples/LIDAR_TOP/*.pcd.bin projected (sparse), <version>/*.json",
    "sunrgbd": "SUN RGB-D: <sensor>/.../<scene>/image/*.jpg, depth/*.png, intrinsics.txt",
    "spring": "Spring (train): <scene>/frame_left/*.png, disp1_left/*.dsp5, cam_data/intrinsics.txt",
    "focal": "focal-length set (no depth; DDDP, FiveK, PPR10K, RAISE, SPAQ, ZOOM): photos with EXIF focal length",
}


def _common_options() -> argparse.ArgumentParser:
    """Options every format takes."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--root", required=True, metavar="DIR", help="the dataset as downloaded (layout: docs/convert.md)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the shards")
    p.add_argument("--dataset", metavar="NAME", help="dataset name stored in every sample (default: the format)")
    p.add_argument("--prefix", metavar="NAME", help="shard file prefix (default: --dataset)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                   help="decoding processes (default: min(8, CPUs))")
    p.add_argument("--depth-format", choices=DEPTH_FORMATS, default="npy16",
                   help="npy16 (default; values above 65504 need npy32 or png16), npy32 or png16")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpg", help="jpg (quality 95) or png (lossless)")
    return p


def _split_options(parser: argparse.ArgumentParser, fmt: str) -> None:
    """The format-specific options."""
    if fmt == "sintel":
        parser.add_argument("--pass", dest="render_pass", choices=("final", "clean"), default="final",
                            help="which rendering to take the images from (default final)")
    elif fmt == "kitti":
        parser.add_argument("--split", choices=("train", "val"), default="val")
    elif fmt == "nyu":
        parser.add_argument("--split", choices=("all", "train", "test"), default="all",
                            help="train/test need --split-file")
        parser.add_argument("--split-file", metavar="PATH", help="1-based test image numbers (splits.mat testNdxs)")
    elif fmt == "hypersim":
        parser.add_argument("--camera-csv", metavar="PATH",
                            help="metadata_camera_parameters.csv (default: 1024x768, 60 deg horizontal FOV)")
        parser.add_argument("--split", choices=("train", "val", "test"), help="needs --split-file")
        parser.add_argument("--split-file", metavar="PATH", help="metadata_images_split_scene_v1.csv")
    elif fmt in ("dis5k", "matting"):
        image_dir, alpha_dir = ("im", "gt") if fmt == "dis5k" else ("image", "alpha")
        parser.add_argument("--split", metavar="DIR", help="subfolder of --root, e.g. DIS-TE1")
        parser.add_argument("--image-dir", default=image_dir, help=f"image subfolder (default {image_dir})")
        parser.add_argument("--alpha-dir", default=alpha_dir, help=f"alpha subfolder (default {alpha_dir})")
        parser.add_argument("--exclude", metavar="PATH",
                            help="samples to leave out, one file stem per line (e.g. DIS-5k's occluded objects)")
    elif fmt == "sunrgbd":
        parser.add_argument("--split-file", metavar="PATH",
                            help="scene folders to convert, one per line (e.g. allsplit.mat's alltest)")
    elif fmt == "nuscenes":
        parser.add_argument("--version", default="v1.0-trainval", help="metadata folder (default v1.0-trainval)")
        parser.add_argument("--channel", default="CAM_FRONT", help="camera (default CAM_FRONT)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The convert command line: one sub-command per format, each with the common and its own options."""
    parser.description = DESCRIPTION
    sub = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    common = _common_options()
    for fmt in FINDERS:
        _split_options(sub.add_parser(fmt, parents=[common], help=HELP[fmt], description=HELP[fmt]), fmt)


def convert(args: argparse.Namespace) -> int:
    """Find the samples and write the shards; ConvertError on bad arguments or inputs."""
    root = Path(args.root)
    if not root.is_dir():
        raise ConvertError(f"--root {root}: no such folder")
    if args.shard_size < 1 or args.workers < 1:
        raise ConvertError("--shard-size and --workers must be >= 1")
    items, skipped = FINDERS[args.format](args, root)
    if not items:
        first = f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ConvertError(f"no {args.format} samples found under {root} ({len(skipped)} unusable{first}); "
                           "expected layout: docs/convert.md")
    dataset = args.dataset or args.format
    settings = formats.Settings(dataset, FORMATS[args.format], args.depth_format, args.image_format)
    return formats.write_shards(items, skipped, settings, Path(args.out), args.prefix or dataset,
                                args.workers, args.shard_size)


def run(args: argparse.Namespace) -> int:
    """Run convert: exit code 0 (ok), 1 (every sample skipped) or 2 (bad arguments or inputs, one `error:` line)."""
    return run_reporting_errors(convert, args)


def main(argv: Sequence[str] | None = None) -> int:
    """`dp_train convert ARGV` without loading the Lightning command line (tools/convert/convert_public.py, tests)."""
    return command_main("convert", add_arguments, run, argv)
