"""Standalone commands (`python -m dp_train make_shards | convert | synth`, and their tools/ wrappers): a parser
whose every refusal is one `error:` line, and a runner that turns a bad input into one."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

Run = Callable[[argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser that reports a bad argument as one `error:` line naming it (exit code 2), not a usage
    dump: the project's rule for every bad input. Its sub-parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        """Print `error: MESSAGE (see `PROG --help`)` and exit with status 2."""
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        self.exit(2)


def run_reporting_errors(run: Run, args: argparse.Namespace) -> int:
    """run(args), turning a refused input (ValueError, which the commands' own errors derive from, or a missing
    file) into one `error:` line on stderr and exit code 2, without a traceback."""
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def command_main(name: str, add_arguments: AddArguments, run: Run, argv: Sequence[str] | None) -> int:
    """Parse `argv` as `dp_train NAME` would and run the command: the entry point of the tools/ wrappers and of
    in-process callers, which need not import the Lightning command line that `python -m dp_train` loads."""
    parser = OneLineParser(prog=f"dp_train {name}")
    add_arguments(parser)
    return run(parser.parse_args(argv))
