"""How `predict` reports problems: a usage error is one `error:` line and exit code 2; a bad file one line."""

from __future__ import annotations

EXIT_OK, EXIT_ALL_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with the command line or environment; reported as one `error:` line, exit code 2."""


def one_line(err: BaseException) -> str:
    """The first line of an exception message (type name when it has none)."""
    text = str(err).strip()
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    return text.splitlines()[0] if text else type(err).__name__


def reason(err: BaseException) -> str:
    """`Type: first line` of an error, as a file's row of the summary records it."""
    return f"{type(err).__name__}: {one_line(err)}"
