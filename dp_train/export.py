"""`python -m dp_train export`: a training checkpoint's network as Apple-layout weights."""

from __future__ import annotations

import argparse
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
    if args.out.suffix not in SUFFIXES:
        print(f"error: --out {args.out} must end in one of {', '.join(SUFFIXES)}", file=sys.stderr)
        return 2
    if args.out.exists() and (args.out.is_dir() or not args.overwrite):
        what = "is a directory" if args.out.is_dir() else "exists: pass --overwrite to replace it"
        print(f"error: --out {args.out} {what}", file=sys.stderr)
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


def check_shape(state: dict[str, torch.Tensor], shape: dict, ckpt: Path) -> None:
    """Raise one ValueError unless `state` is exactly the network `shape` describes (built without memory, on
    the meta device): what is exported then loads strictly into that network."""
    with torch.device("meta"):
        model = build_depth_pro(config_for(state, shape))
    check_state_dict_fits(model, state, f"{ckpt} (network {shape})")
