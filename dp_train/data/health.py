"""Bad-record accounting per source: records read and failed, warnings (rate-limited), and the error that
stops a run when a source's failure share exceeds `max_bad_fraction`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """A source fails too often to train on."""


@dataclass
class SourceHealth:
    """Per-source counts of records read and records/shards that failed."""

    name: str
    max_bad_fraction: float
    min_records: int
    seen: int = 0
    bad: int = 0
    unreported: int = 0
    last_warning: float = field(default=0.0)
    last_reason: str = ""

    def record_ok(self) -> None:
        """Count one good record."""
        self.seen += 1

    def record_bad(self, reason: str, count: int = 1) -> None:
        """Count `count` bad records (one record, or the samples a lost shard held), warn (rate-limited), and
        stop if the source is mostly broken."""
        self.seen += count
        self.bad += count
        self.unreported += count
        self.last_reason = reason
        now = time.monotonic()
        if self.bad - count < 3 or now - self.last_warning > 60:
            log.warning("skipping bad data in source %r (%d so far): %s", self.name, self.bad, reason)
            self.last_warning = now
        if self.seen >= self.min_records and self.bad > self.max_bad_fraction * self.seen:
            raise DataError(
                f"source {self.name!r}: {self.bad} of {self.seen} records failed "
                f"(more than {self.max_bad_fraction:.0%}); last: {reason}"
            )

    def check_total(self) -> None:
        """Stop if the source's bad share, over every record read, exceeds `max_bad_fraction` (validation calls
        it at the end of a source: a small or fully unreadable set never reaches the running guard's minimum)."""
        if self.bad > self.max_bad_fraction * self.seen:
            raise DataError(f"source {self.name!r}: {self.bad} of {self.seen} records failed "
                            f"(more than {self.max_bad_fraction:.0%}); last: {self.last_reason}")

    def take_unreported(self) -> int:
        """Bad records since the previous call (reported once with a batch)."""
        count, self.unreported = self.unreported, 0
        return count
