"""`python -m dp_train export`: a training checkpoint's network as Apple-layout weights, or as an ONNX graph
(dp_train/inference/onnx_export.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from dp_train.inference import onnx_export
from dp_train.model import build_depth_pro
from dp_train.model.weights import (
    check_state_dict_fits,
    config_for,
    read_weights,
    save_state_dict,
)

FORMATS = {"pt": (".pt", ".pth"), "safetensors": (".safetensors",), "onnx": (".onnx",)}
"""--format -> the file name endings --out may have; without --format, the ending chooses."""
SUFFIXES = tuple(suffix for suffixes in FORMATS.values() for suffix in suffixes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the export command."""
    parser.add_argument("--ckpt", required=True, type=Path,
                        help="Lightning checkpoint written by fit: a .ckpt file, or an FSDP run's sharded .ckpt "
                             "directory; also exported weights (.safetensors, or a .pt of the depth_pro_l shape)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output file: .pt/.pth (torch, tensors only), .safetensors (which also records the "
                             "network's shape, so `predict` needs no --preset) or .onnx (with <out>.json, and "
                             "<out>.data beyond 2 GiB of weights: docs/export.md)")
    parser.add_argument("--format", choices=sorted(FORMATS), default=None,
                        help="what to write (default: chosen by --out's ending)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out (and its .json/.data) if it exists")
    interpolation = parser.add_argument_group("weight interpolation (docs/export.md)")
    interpolation.add_argument("--interpolate-from", type=Path, default=None, metavar="START",
                               help="write (1 - alpha) * START + alpha * --ckpt: the fine-tuned weights pulled back "
                                    "towards the weights the fine-tune started from (same network shape)")
    interpolation.add_argument("--alpha", type=float, default=None,
                               help="share of the fine-tuned weights, in [0, 1] (with --interpolate-from)")
    onnx_export.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Write the network's tensors under the reference's names (loadable by Apple's code with strict=True), or
    its graph as ONNX (`--format onnx`)."""
    onnx = (args.format or format_of(args.out)) == "onnx"
    problem = out_problem(args.out, args.ckpt, args.overwrite, FORMATS[args.format] if args.format else SUFFIXES,
                          onnx_export.companions(args.out) if onnx else ())
    if problem or (problem := interpolation_problem(args)) or (onnx and (problem := onnx_export.usage_problem(args))):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        state, shape = read_weights(args.ckpt)
        if shape:
            check_shape(state, shape, args.ckpt)
        if args.interpolate_from is not None:
            state = interpolate(read_weights(args.interpolate_from)[0], state, args.alpha, args.interpolate_from)
        if onnx:
            return onnx_export.run(args, state, shape)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, args.out, shape=shape)
    print(f"wrote {len(state)} tensors to {args.out}" + (f" (network {shape})" if shape else ""))
    return 0


def interpolation_problem(args: argparse.Namespace) -> str | None:
    """Why `--interpolate-from` / `--alpha` cannot be used as given, or None."""
    if (args.interpolate_from is None) != (args.alpha is None):
        return "--interpolate-from and --alpha go together: pass both or neither"
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        return f"--alpha {args.alpha} must lie in [0, 1] (0: the start, 1: the fine-tuned weights)"
    return None


def interpolate(start: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float,
                start_path: Path) -> dict[str, torch.Tensor]:
    """`(1 - alpha) * start + alpha * tuned`, tensor by tensor (computed in float32, stored in the fine-tuned
    tensor's dtype; non-float tensors are the fine-tuned ones). Both must hold the same tensors in the same shapes:
    a start of another network is one ValueError naming the first difference."""
    if start.keys() != tuned.keys():
        differing = sorted(start.keys() ^ tuned.keys())
        raise ValueError(f"--interpolate-from {start_path} is not the fine-tuned network's start: tensor "
                         f"{differing[0]} is in only one of them ({len(differing)} differ)")
    mixed = {}
    for key, value in tuned.items():
        if start[key].shape != value.shape:
            raise ValueError(f"--interpolate-from {start_path}: {key} has shape {tuple(start[key].shape)}, the "
                             f"fine-tuned network's {tuple(value.shape)}")
        mixed[key] = torch.lerp(start[key].float(), value.float(), alpha).to(value.dtype) \
            if value.is_floating_point() else value
    return mixed


def format_of(out: Path) -> str:
    """The format --out's ending chooses (torch's for an unknown ending, which `out_problem` refuses)."""
    return next((name for name, suffixes in FORMATS.items() if out.suffix in suffixes), "pt")


def out_problem(
    out: Path, ckpt: Path, overwrite: bool, suffixes: tuple[str, ...] = SUFFIXES, companions: tuple[Path, ...] = ()
) -> str | None:
    """Why `out` (and the `companions` written beside it) cannot be written, or None; the message names the file.
    The input itself (the same file after resolving links and relative paths, or a file inside a sharded
    checkpoint directory) is refused even with `overwrite`: bare weights would replace the training state. A
    folder on the way that is a file would fail only after reading the weights."""
    for path in (out, *companions):
        if is_or_inside(path, ckpt):
            return f"--out {path} is, or lies inside, the checkpoint --ckpt {ckpt}: choose another file (the input " \
                   "is never replaced, even with --overwrite)"
    if out.suffix not in suffixes:
        return f"--out {out} must end in one of {', '.join(suffixes)}"
    folder = next(p for p in (out.parent.absolute(), *out.parent.absolute().parents) if p.exists())
    if not folder.is_dir():
        return f"--out {out} cannot be written: {folder} is a file, not a folder"
    for path in (out, *companions):
        if path.exists() and (path.is_dir() or not overwrite):
            return f"--out {path} is a directory" if path.is_dir() else \
                f"--out {path} exists: pass --overwrite to replace it"
    return None


def is_or_inside(out: Path, ckpt: Path) -> bool:
    """True when `out` is the file `ckpt` (also through a link) or lies inside the directory `ckpt`."""
    target = out.resolve()
    if target == ckpt.resolve() or ckpt.resolve() in target.parents:
        return True
    return out.exists() and ckpt.exists() and os.path.samefile(out, ckpt)


def check_shape(state: dict[str, torch.Tensor], shape: dict, ckpt: Path) -> None:
    """Raise one ValueError unless `state` is exactly the network `shape` describes (built without memory, on
    the meta device): what is exported then loads strictly into that network."""
    with torch.device("meta"):
        model = build_depth_pro(config_for(state, shape))
    check_state_dict_fits(model, state, f"{ckpt} (network {shape})")
