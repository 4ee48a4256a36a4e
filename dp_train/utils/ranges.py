"""Ranges of numeric recipe values, and the one-line error for a value outside its range.

A class checks its own values in its constructor against a table of `Range`s (`check_ranges`); the ValueError
names the recipe key, which the CLI prints as one `error:` line. NaN and infinite values lie in no range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """An interval of accepted values; each end closed unless marked open."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        """True when `value` is finite and lies in the interval."""
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        """`>= 1`, `> 0` or `in [0, 1)`."""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
"""(0, inf): learning rates, timeouts."""
SHARE = Range(0, 1)
"""[0, 1]: a fraction of records."""


def check_ranges(prefix: str, values: dict[str, Any], ranges: dict[str, Range]) -> None:
    """Raise ValueError `prefix.key=value: must be ...` for the first value outside its range."""
    for key, allowed in ranges.items():
        value = values[key]
        if not allowed.holds(value):
            raise ValueError(f"{prefix}.{key}={value}: must be {allowed}")
