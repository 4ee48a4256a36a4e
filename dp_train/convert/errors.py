"""The conversion error types and how a command reports them.

ConvertError is a problem with the inputs as a whole (one `error:` line, exit code 2); SkipSample a problem
with one sample, which is skipped and listed with its reason. Shared by every converter of this package.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


class ConvertError(Exception):
    """A problem with the inputs as a whole: reported as one `error:` line, exit code 2."""


class SkipSample(Exception):
    """A problem with one sample: it is skipped and listed with this reason."""


def run_reporting_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """run(args), turning ConvertError into one `error:` line on stderr and exit code 2."""
    try:
        return run(args)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
