"""`python -m dp_train export`: a training checkpoint's network as Apple-layout weights."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from dp_train.model import build_depth_pro
from dp_train.model.weights import check_state_dict_fits, config_for, read_weights, save_state_dict

SUFFIXES = (".pt", ".pth", ".safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the export command."""
    parser.add_argument("--ckpt", required=True, type=Path,
                        help="Lightning checkpoint written by fit: a .ckpt file, or an FSDP run's sharded .ckpt directory")
    parser.add_argument("--out", required=True, type=Path,
                        help="output file: .pt/.pth (torch, tensors only) or .safetensors (which also records the "
                             "network's shape, so `predict` needs no --preset)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    """Write the network's tensors under the reference's names (loadable by Apple's code with strict=True)."""
    problem = out_problem(args.out, args.ckpt, args.overwrite)
    if problem:
        print(f"error: --out {args.out} {problem}", file=sys.stderr)
        return 2
    try:
        state, shape = read_weights(args.ckpt)
        if shape:
            check_shape(state, shape, args.ckpt)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, args.out, shape=shape)
    print(f"wrote {len(state)} tensors to {args.out}" + (f" (network {shape})" if shape else ""))
    return 0


def out_problem(out: Path, ckpt: Path, overwrite: bool) -> str | None:
    """Why `out` cannot be written, or None. The input itself (the same file after resolving links and relative
    paths, or a file inside a sharded checkpoint directory) is refused even with `overwrite`: bare weights would
    replace the training state. A folder on the way that is a file would fail only after reading the weights."""
    if is_or_inside(out, ckpt):
        return f"is, or lies inside, the checkpoint --ckpt {ckpt}: choose another file (the input is never replaced, " \
               "even with --overwrite)"
    if out.suffix not in SUFFIXES:
        return f"must end in one of {', '.join(SUFFIXES)}"
    folder = next(p for p in (out.parent.absolute(), *out.parent.absolute().parents) if p.exists())
    if not folder.is_dir():
        return f"cannot be written: {folder} is a file, not a folder"
    if out.exists() and (out.is_dir() or not overwrite):
        return "is a directory" if out.is_dir() else "exists: pass --overwrite to replace it"
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
