"""`dp_train predict`: metric depth maps and focal lengths for images and clips, with trained weights.

For every image this writes `<stem>.npy` (float32 metric depth in metres at the image's own resolution) and
`<stem>.png` (colour-mapped inverse depth for people to look at); for every clip (a video, or with `--sequence` a
folder of frames) the same per frame in `<clip>/<frame:06d>.*`, with one focal length per clip and the clip's
temporal-stability figure; plus one `summary.csv` and `summary.json` for the run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from dp_train.inference.predict.errors import EXIT_ALL_FAILED, EXIT_OK, EXIT_USAGE, UsageError, one_line
from dp_train.inference.predict.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Item, check_outputs, find_items
from dp_train.inference.predict.model import DTYPES, check_dtype_supported, forward_of, load_model, resolve_device
from dp_train.inference.predict.outputs import ResultWriter, tqdm_warn, write_summary
from dp_train.inference.predict.reading import read_frames, video_length, video_problem
from dp_train.inference.predict.runner import BatchRunner
from dp_train.inference.predict.threads import WriteBehind
from dp_train.model import PRESETS, DepthPro, DepthProConfig

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
"""Reading (and as many writing) threads by default: a 12 MP photo takes ~1.5 s to decode and resize and ~1.3 s to
colour-map and encode on one core of the 2-core CI VM (results/predict_speed.md), several times a GPU's forward,
so one thread each way would starve a GPU; four each way without taking every core of a small machine."""

EPILOG = """\
outputs (in --output, created if needed; other files there are left alone; an
existing output file is replaced only with --overwrite, an input file never):
  <stem>.npy     float32 metric depth in metres, H x W of the (EXIF-rotated) image
  <stem>.png     colour-mapped inverse depth (near = red, far = blue), for viewing
  <clip>/<frame:06d>.npy / .png
                 the same for each frame of a clip: a video file (mp4, mov, avi,
                 mkv, webm, ...), or with --sequence a folder of frames (read in
                 name order, frame_2 before frame_10)
  summary.csv / summary.json
                 per input: input, width, height, focal_px, focal_source
                 (given | exif | estimated), depth min/median/max, or the error;
                 for a clip also frames and temporal_change (the mean over
                 consecutive frames of mean |d_t - d_t-1| / ((d_t + d_t-1) / 2))
  With --recursive, sub-directories of the input are kept in the output. Two
  inputs with the same stem in one directory get <stem>_<ext> outputs instead.

focal length: --f-px if given, else EXIF FocalLengthIn35mmFilm converted with the
  35 mm diagonal (f_px = f35 * sqrt(W^2 + H^2) / sqrt(36^2 + 24^2)), else the
  network's FOV head estimate. A clip takes one focal length, its first frame's.

speed: --batch-size N runs N images per forward (same depth within float
  rounding); --workers threads decode ahead and as many write behind;
  --compile compiles the network (slow first batch, faster after).

exit codes:
  0  at least one input succeeded (unreadable files are reported and skipped)
  1  every input failed
  2  usage error: missing input, unreadable weights, CUDA unavailable, ...
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `predict` options to `parser`."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--weights", required=True, type=Path, help="weights file (.pt, .safetensors or Lightning .ckpt)"
    )
    parser.add_argument("--input", required=True, type=Path,
                        help="an image file, a video file, or a directory of images (and videos)")
    parser.add_argument("--output", required=True, type=Path, help="directory for the depth maps and summary")
    parser.add_argument(
        "--preset", default=None, choices=sorted(PRESETS),
        help="network size (default: the one the weights record, i.e. a training checkpoint's or an exported "
             ".safetensors'; else depth_pro_l)",
    )
    parser.add_argument(
        "--vit-img-size", type=int, default=None, metavar="PX",
        help="ViT input size (network input is 4x this); weights trained at another size load with their ViTs' "
             "position embeddings resampled (one line on stderr): e.g. 256 runs depth_pro.pt at 1024 x 1024",
    )
    parser.add_argument(
        "--f-px", type=float, default=None, metavar="F", help="focal length in pixels for every image and clip"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="inference precision (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="images per forward (default: %(default)s; 4 on a GPU with the memory for it)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                        help="threads decoding and resizing inputs ahead of the network, and as many writing its "
                             "outputs behind it (default: %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network: a slow first batch (minutes for depth_pro_l), then faster")
    parser.add_argument("--sequence", action="store_true",
                        help="the images of the input folder are the frames of one clip (with --recursive: each "
                             "folder's images are a clip); video files are clips without it")
    parser.add_argument("--recursive", action="store_true", help="scan the input directory recursively")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace existing outputs in --output and allow it to be the input folder (input files are never "
             "replaced)",
    )


def run(args: argparse.Namespace) -> int:
    """Run `predict`; returns 0 if any input succeeded, 1 if all failed, 2 on usage errors."""
    try:
        return _run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse a focal length, batch size or worker count that cannot be used."""
    if args.f_px is not None and not (math.isfinite(args.f_px) and args.f_px > 0):
        raise UsageError(f"--f-px must be a positive number, got {args.f_px}")
    for name in ("batch_size", "workers"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def _items(args: argparse.Namespace) -> list[Item]:
    """The inputs, refusing a run with none and a single video that cannot be read."""
    items = find_items(args.input, args.output, args.recursive, args.sequence)
    if not items:
        suffixes = ", ".join(sorted(s[1:] for s in IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise UsageError(f"no images or videos ({suffixes}) found in {args.input}")
    problem = video_problem(items[0].path) if len(items) == 1 and items[0].video else None
    if problem:
        raise UsageError(f"cannot read video {args.input}: {problem}")
    return items


def _prepare(args: argparse.Namespace) -> tuple[list[Item], DepthPro]:
    """Validate the command line, list inputs and outputs, and load the model on its device/dtype."""
    _check_numbers(args)
    items = _items(args)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    check_dtype_supported(device, dtype)
    check_outputs(items, args.output, args.overwrite)
    model = load_model(args.weights, args.preset, args.vit_img_size)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory {args.output}: {err.strerror or one_line(err)}") from None
    return items, model.to(device=device, dtype=dtype)


def _run(args: argparse.Namespace) -> int:
    """The body of `run`, raising UsageError for problems reported with exit code 2."""
    from tqdm import tqdm

    items, model = _prepare(args)
    total = sum(len(i.frames) or (video_length(i.path) if i.video else 1) for i in items)
    clips = [index for index, item in enumerate(items) if item.is_clip]
    runner = BatchRunner(model, forward_of(model, args.compile), args.f_px, clips, args.batch_size, args.compile)
    frames = read_frames(items, model.img_size, args.workers, ahead=2 * args.batch_size)
    with tqdm(total=total, desc="predict", unit="img", file=sys.stderr) as bar:
        writer = ResultWriter(items, tqdm_warn, lambda: bar.update(1))
        with WriteBehind(writer, maxsize=2 * args.batch_size, threads=args.workers) as behind:
            for prediction in runner.predictions(frames):
                behind.send(prediction)
    records = writer.records(runner.temporal_change)
    network = {k: v for k, v in asdict(model.config).items() if k not in DepthProConfig.RUNTIME_FIELDS}
    settings = {"weights": str(args.weights), "network": network, "device": str(runner.device),
                "dtype": args.dtype, "batch_size": args.batch_size, "compile": args.compile}
    write_summary(records, args.output, settings)
    succeeded = sum(r.error is None for r in records)
    print(f"{succeeded}/{len(records)} inputs written to {args.output}", file=sys.stderr)
    return EXIT_OK if succeeded else EXIT_ALL_FAILED
