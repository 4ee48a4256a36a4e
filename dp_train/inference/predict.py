"""`dp_train predict`: metric depth maps and focal lengths for images, with trained weights.

For every image this writes `<stem>.npy` (float32 metric depth in metres at
the image's own resolution) and `<stem>.png` (colour-mapped inverse depth for
people to look at), plus one `summary.csv` and `summary.json` for the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dp_train.utils.exif import focal_35mm_to_px
from dp_train.inference.images import image_to_tensor, load_image
from dp_train.model import PRESETS, DepthPro, DepthProConfig, build_depth_pro
from dp_train.model.weights import config_for, fit_state_dict, read_weights
from dp_train.utils.visualize import colorize_inverse_depth

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""File name endings (compared lower-case) taken as images when scanning a directory."""

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

EXIT_OK, EXIT_ALL_FAILED, EXIT_USAGE = 0, 1, 2

OUTPUT_SUFFIXES = (".npy", ".png")
"""Files written per image: `<stem>.npy` and `<stem>.png`."""
SUMMARY_FILES = ("summary.csv", "summary.json")

EPILOG = """\
outputs (in --output, created if needed; other files there are left alone; an
existing output file is replaced only with --overwrite, an input image never):
  <stem>.npy     float32 metric depth in metres, H x W of the (EXIF-rotated) image
  <stem>.png     colour-mapped inverse depth (near = red, far = blue), for viewing
  summary.csv / summary.json
                 per image: input, width, height, focal_px, focal_source
                 (given | exif | estimated), depth min/median/max, or the error
  With --recursive, sub-directories of the input are kept in the output. Two
  inputs with the same stem in one directory get <stem>_<ext> outputs instead.

focal length: --f-px if given, else EXIF FocalLengthIn35mmFilm converted with the
  35 mm diagonal (f_px = f35 * sqrt(W^2 + H^2) / sqrt(36^2 + 24^2)), else the
  network's FOV head estimate.

exit codes:
  0  at least one image succeeded (unreadable files are reported and skipped)
  1  every image failed
  2  usage error: missing input, unreadable weights, CUDA unavailable, ...
"""


class UsageError(Exception):
    """A problem with the command line or environment; reported as one `error:` line, exit code 2."""


@dataclass
class Record:
    """One row of the summary: the result for one input file."""

    input: str
    width: int | None = None
    height: int | None = None
    focal_px: float | None = None
    focal_source: str | None = None
    depth_min: float | None = None
    depth_median: float | None = None
    depth_max: float | None = None
    depth_npy: str | None = None
    depth_png: str | None = None
    error: str | None = None


# ---------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `predict` options to `parser`."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--weights", required=True, type=Path, help="weights file (.pt, .safetensors or Lightning .ckpt)"
    )
    parser.add_argument("--input", required=True, type=Path, help="an image file or a directory of images")
    parser.add_argument("--output", required=True, type=Path, help="directory for the depth maps and summary")
    parser.add_argument(
        "--preset", default=None, choices=sorted(PRESETS),
        help="network size (default: the one the weights record, i.e. a training checkpoint's or an exported "
             ".safetensors'; else depth_pro_l)",
    )
    parser.add_argument(
        "--vit-img-size", type=int, default=None, metavar="PX",
        help="override the ViT input size (network input is 4x this); must match the weights",
    )
    parser.add_argument(
        "--f-px", type=float, default=None, metavar="F", help="focal length in pixels for every image"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="inference precision (default: %(default)s)"
    )
    parser.add_argument("--recursive", action="store_true", help="scan the input directory recursively")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace existing outputs in --output and allow it to be the input folder (input images are never "
             "replaced)",
    )


# ---------------------------------------------------------------- inputs


def find_images(input_path: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Image files to process: `input_path` itself if a file, else the images in the directory, sorted.

    Files under `exclude` (e.g. an output directory nested in the input) are skipped.
    """
    if not input_path.exists():
        raise UsageError(f"input path not found: {input_path}")
    if input_path.is_file():
        return [input_path]
    candidates = input_path.rglob("*") if recursive else input_path.iterdir()
    images = [p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if exclude is not None:
        images = [p for p in images if not _is_within(p, exclude)]
    return sorted(images)


def _is_within(path: Path, directory: Path) -> bool:
    """Whether `path` lies inside `directory` (both resolved)."""
    return directory.resolve() in path.resolve().parents


def output_stems(images: list[Path], input_path: Path, output_dir: Path) -> list[Path]:
    """Output path without suffix for each image; same-stem inputs in one folder get `<stem>_<ext>`."""
    root = input_path if input_path.is_dir() else input_path.parent
    relative = [p.relative_to(root) for p in images]
    plain = [rel.parent / rel.stem for rel in relative]
    counts: dict[Path, int] = {}
    for stem in plain:
        counts[stem] = counts.get(stem, 0) + 1
    return [
        output_dir / (stem if counts[stem] == 1 else stem.parent / f"{rel.stem}_{rel.suffix[1:].lower()}")
        for stem, rel in zip(plain, relative)
    ]


def check_outputs(images: list[Path], stems: list[Path], output_dir: Path, overwrite: bool) -> None:
    """Never replace an input image. Unless `overwrite`, also refuse to write beside input images (a later run
    would read the outputs as inputs) and to replace any existing file (outputs of an earlier run, or the user's)."""
    targets = [stem.with_name(stem.name + suffix) for stem in stems for suffix in OUTPUT_SUFFIXES]
    targets += [output_dir / name for name in SUMMARY_FILES]
    inputs = {p.resolve() for p in images}
    for target in targets:
        if target.resolve() in inputs:
            raise UsageError(f"output {target} would overwrite an input image; choose another --output")
    if overwrite:
        return
    beside = {stem.parent.resolve() for stem in stems} & {p.parent.resolve() for p in images}
    if beside:
        raise UsageError(f"--output {output_dir} would put outputs beside the input images in {min(beside)}; choose "
                         "another folder (or pass --overwrite)")
    existing = [t for t in targets if t.exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UsageError(f"--output {output_dir} already holds {existing[0].name}{more}: pass --overwrite to replace "
                         "them, or choose another folder")


# ---------------------------------------------------------------- model


def resolve_device(name: str | None) -> torch.device:
    """The requested device, or cuda when available else cpu; UsageError if CUDA is asked for but absent."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available (use --device cpu)")
    return torch.device(name)


def check_dtype_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Probe the ops the network needs in `dtype` on `device`; UsageError if this build lacks them."""
    try:
        x = torch.zeros(1, 3, 8, 8, device=device, dtype=dtype)
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).to(device=device, dtype=dtype)
        y = torch.nn.functional.interpolate(conv(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        torch.nn.functional.layer_norm(y, y.shape[-1:])
        torch.nn.functional.conv_transpose2d(y, torch.zeros(4, 4, 2, 2, device=device, dtype=dtype), stride=2)
    except (RuntimeError, NotImplementedError) as err:
        name = str(dtype).removeprefix("torch.")
        raise UsageError(
            f"{name} is not supported on {device.type} by this torch build ({_one_line(err)}); use --dtype fp32"
        ) from None


def load_model(weights: Path, preset: str | None, vit_img_size: int | None = None) -> DepthPro:
    """Build the network `weights` need and load them strictly. Its shape: `preset` if given, else the one the
    weights record (a training checkpoint's hyper-parameters, an exported .safetensors' header), else
    `depth_pro_l`; `vit_img_size` on top (weights trained at another size load with their ViTs' position
    embeddings resampled, said on stderr). The FOV head is included iff the weights have one."""
    try:
        state, shape = read_weights(weights)
        overrides = {"vit_img_size": vit_img_size} if vit_img_size is not None else {}
        model = build_depth_pro(config_for(state, {"preset": preset} if preset else shape, **overrides))
        state = fit_state_dict(model, state, str(weights))
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        raise UsageError(_one_line(err)) from None
    model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------- per image


def choose_focal(f_px: float | None, focal_35mm: float | None, width: int, height: int) -> tuple[float | None, str]:
    """Focal length in pixels and its source: given > exif > estimated (None, left to the network)."""
    if f_px is not None:
        return f_px, "given"
    if focal_35mm is not None:
        return focal_35mm_to_px(focal_35mm, width, height), "exif"
    return None, "estimated"


@torch.inference_mode()
def predict_depth(model: DepthPro, image: torch.Tensor, f_px: float | None) -> tuple[np.ndarray, float]:
    """Run the network on one (3, H, W) image in [-1, 1]; return float32 depth (H, W) in metres and f_px."""
    device = next(model.parameters()).device
    if f_px is None and model.fov is None:
        raise ValueError("no focal length given (--f-px or EXIF) and the network has no FOV head")
    out = model.infer(image.to(device), f_px=f_px)
    focal = float(out["focallength_px"])
    if not (math.isfinite(focal) and focal > 0):
        raise ValueError(f"the FOV head estimated an invalid focal length ({focal:g} px); pass --f-px")
    return out["depth"].float().cpu().numpy().astype(np.float32, copy=False), focal


def depth_stats(depth: np.ndarray) -> tuple[float, float, float]:
    """Min, median and max of the finite depth values (NaN when there are none)."""
    finite = depth[np.isfinite(depth)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    return float(finite.min()), float(np.median(finite)), float(finite.max())


def process_image(model: DepthPro, path: Path, stem: Path, f_px: float | None) -> Record:
    """Predict one image and write `<stem>.npy` / `<stem>.png`; errors raise (the caller records them)."""
    img, focal_35mm = load_image(path)
    height, width = img.shape[:2]
    focal, source = choose_focal(f_px, focal_35mm, width, height)
    depth, focal = predict_depth(model, image_to_tensor(img), focal)
    npy, png = stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".png")
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, depth)
    Image.fromarray(colorize_inverse_depth(depth)).save(png)
    low, median, high = depth_stats(depth)
    return Record(str(path), width, height, focal, source, low, median, high, str(npy), str(png))


# ---------------------------------------------------------------- summary


def write_summary(records: list[Record], output_dir: Path, settings: dict[str, object]) -> None:
    """Write `summary.csv` (one row per input) and `summary.json` (run settings + the same rows)."""
    rows = [asdict(r) for r in records]
    names = [f.name for f in fields(Record)]
    with open(output_dir / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    json_rows = [{k: _json_value(v) for k, v in row.items()} for row in rows]
    with open(output_dir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump({**settings, "images": json_rows}, fh, indent=2)
        fh.write("\n")


def _json_value(value: object) -> object:
    """NaN/inf floats become null so the JSON stays standard."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _one_line(err: BaseException) -> str:
    """The first line of an exception message (type name when it has none)."""
    text = str(err).strip()
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------- entry point


def run(args: argparse.Namespace) -> int:
    """Run `predict`; returns 0 if any image succeeded, 1 if all failed, 2 on usage errors."""
    try:
        return _run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _prepare(args: argparse.Namespace) -> tuple[list[Path], list[Path], DepthPro]:
    """Validate the command line, list inputs and outputs, and load the model on its device/dtype."""
    nested_output = args.output if args.output.resolve() != args.input.resolve() else None
    images = find_images(args.input, args.recursive, exclude=nested_output)
    if not images:
        suffixes = ", ".join(sorted(s[1:] for s in IMAGE_SUFFIXES))
        raise UsageError(f"no images ({suffixes}) found in {args.input}")
    if args.f_px is not None and not (math.isfinite(args.f_px) and args.f_px > 0):
        raise UsageError(f"--f-px must be a positive number, got {args.f_px}")
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    check_dtype_supported(device, dtype)
    stems = output_stems(images, args.input, args.output)
    check_outputs(images, stems, args.output, args.overwrite)
    model = load_model(args.weights, args.preset, args.vit_img_size)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory {args.output}: {err.strerror or _one_line(err)}") from None
    return images, stems, model.to(device=device, dtype=dtype)


def _run(args: argparse.Namespace) -> int:
    """The body of `run`, raising UsageError for problems reported with exit code 2."""
    from tqdm import tqdm

    images, stems, model = _prepare(args)
    records = []
    for path, stem in zip(tqdm(images, desc="predict", unit="img", file=sys.stderr), stems):
        try:
            records.append(process_image(model, path, stem, args.f_px))
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
            reason = f"{type(err).__name__}: {_one_line(err)}"
            tqdm.write(f"warning: skipping {path}: {reason}", file=sys.stderr)
            records.append(Record(str(path), error=reason))
    device = str(next(model.parameters()).device)
    network = {k: v for k, v in asdict(model.config).items() if k not in DepthProConfig.RUNTIME_FIELDS}
    settings = {"weights": str(args.weights), "network": network, "device": device, "dtype": args.dtype}
    write_summary(records, args.output, settings)
    succeeded = sum(r.error is None for r in records)
    print(f"{succeeded}/{len(records)} images written to {args.output}", file=sys.stderr)
    return EXIT_OK if succeeded else EXIT_ALL_FAILED
