"""An evaluation pass scores each sample once, even when its shards hold it twice.

Each dataloader worker drops a key it already read (`stream.raw_records`), but the workers of a rank read
different shards: a sample copied into two shards that two workers read reached the metrics twice. The loading
process sees every batch of its rank, so it drops the repeats there. A copy read by another rank is not seen:
ranks share no state before the metrics are synced (torchmetrics), and validation stays free of collectives.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

WARNINGS_PER_PASS = 3
"""Repeats named in the log per pass (all are counted in `bad_records`)."""


class EvaluatedOnce:
    """The (source, key) pairs of the current evaluation pass on this rank."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, str]] = set()
        self.repeats = 0

    def start(self) -> None:
        """Begin a pass (each validation or test loop iterates its loader anew)."""
        self.seen.clear()
        self.repeats = 0

    def mark_repeats(self, batch: dict) -> dict:
        """`batch` with every sample this pass already had turned into padding (run, not scored) and counted
        as a bad record of its source."""
        padding, bad = batch["padding"].clone(), batch["bad_records"].clone()
        for index, (key, source) in enumerate(zip(batch["key"], batch["source"].tolist())):
            if padding[index]:
                continue
            if (source, key) in self.seen:
                padding[index] = True
                bad[source] += 1
                self.repeats += 1
                if self.repeats <= WARNINGS_PER_PASS:
                    log.warning("sample %r of evaluation source #%d read again from another shard: scored once, "
                                "counted as a bad record", key, source)
            self.seen.add((source, key))
        return batch | {"padding": padding, "bad_records": bad}
