"""`python -m dp_train synth`: procedural scenes with exact metric depth -> dp_train webdataset shards
(tools/synth_scenes.py wraps it).

Scene i uses seed `--seed + i`, so two runs with the same options give the same data and different `--seed` ranges
give disjoint sets. Example (the shipped sample set):

    python -m dp_train synth --out shards/sample/train --prefix synth-train --count 64 --seed 0 \\
        --samples-per-shard 32 --depth-format png16 --examples docs/img
    python -m dp_train synth --out shards/sample/val --prefix synth-val --count 16 --seed 100000 \\
        --depth-format png16

`--examples DIR` also saves the first `--num-examples` scenes as PNG panels (image | colour-mapped inverse depth).
The world is this package; `--look real` renders it through a camera and a depth sensor (samples flagged real,
for the curriculum check of tools/ablate.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from dp_train.synth.world import DEFAULT_SIZE, LOOKS, save_examples, write_synthetic_shards
from dp_train.utils.commands import command_main, run_reporting_errors


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '192x320' -> (192, 320) as (height, width)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(parts) > 2 or h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size must be N or HxW with sides >= 8, got {text!r}")
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The synth options."""
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--out", type=Path, required=True, help="output folder for the shards and index")
    p.add_argument("--prefix", default="synth", help="shard file prefix (default: synth)")
    p.add_argument("--count", type=int, required=True, help="number of scenes")
    p.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="N or HxW (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scene (default: 0)")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--sky-prob", type=float, default=None,
                   help="chance of an open-sky scene (default: the renderer's own, 0.6)")
    p.add_argument("--look", default="synthetic", choices=LOOKS,
                   help="synthetic: the renderer's exact output; real: camera effects and a depth sensor's "
                        "noisy, holed depth, samples flagged real (dp_train/synth/sensor.py)")
    p.add_argument("--depth-format", default="npy16", choices=["npy16", "npy32", "png16"])
    p.add_argument("--image-format", default="jpg", choices=["jpg", "png"])
    p.add_argument("--examples", type=Path, default=None, help="also save example panels here")
    p.add_argument("--num-examples", type=int, default=4)
    p.add_argument("--examples-name", default="synth", help="panel file names: NAME_<i>.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index with this prefix")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check(args: argparse.Namespace) -> None:
    """ValueError naming the option when the options cannot give the asked-for set, before any rendering."""
    index = args.out / f"{args.prefix}.index.json"
    if index.exists() and not args.overwrite:
        raise ValueError(f"{index} exists (use --overwrite)")
    if args.count < 1 or args.samples_per_shard < 1:
        raise ValueError("--count and --samples-per-shard must be >= 1")
    if args.sky_prob is not None and not 0.0 <= args.sky_prob <= 1.0:
        raise ValueError("--sky-prob must lie in [0, 1]")


def render(args: argparse.Namespace) -> int:
    """Write the shards (and the example panels); returns 0."""
    check(args)
    path = write_synthetic_shards(args.out, args.prefix, args.count, args.size, args.seed, args.samples_per_shard,
                                  args.sky_prob, args.depth_format, args.image_format, progress=not args.quiet,
                                  look=args.look)
    print(f"wrote {args.count} scenes: {path}")
    if args.examples is not None:
        paths = save_examples(args.examples, min(args.num_examples, args.count), args.size, args.seed,
                              args.sky_prob, args.examples_name, args.look)
        print(f"wrote {len(paths)} example panels to {args.examples}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run synth: exit code 0, or 2 on bad options (one `error:` line)."""
    return run_reporting_errors(render, args)


def main(argv: Sequence[str] | None = None) -> int:
    """`dp_train synth ARGV` without loading the Lightning command line (tools/synth_scenes.py, tests)."""
    return command_main("synth", add_arguments, run, argv)
