"""The conversion error types.

ConvertError is a problem with the inputs as a whole (one `error:` line, exit code 2); SkipSample a problem
with one sample, which is skipped and listed with its reason. Shared by every converter of this package.
"""

from __future__ import annotations


class ConvertError(ValueError):
    """A problem with the inputs as a whole: reported as one `error:` line, exit code 2
    (dp_train/utils/commands.py's `run_reporting_errors`)."""


class SkipSample(Exception):
    """A problem with one sample: it is skipped and listed with this reason."""
