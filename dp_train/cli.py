"""Command line: `python -m dp_train <subcommand>` (also installed as `dp-train`)."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("dp_train.predict", "metric depth and focal length for images with trained weights"),
}
"""Subcommand name -> (module providing `add_arguments(parser)` and `run(args) -> int`, help line)."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog="dp_train", description="Train, evaluate and run Depth Pro.")
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name, (module_name, help_line) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_line, description=help_line)
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; returns the process exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    module_name = SUBCOMMANDS[args.command][0]
    return importlib.import_module(module_name).run(args)
