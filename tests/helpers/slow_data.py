"""A tiny iterable dataset that takes its time, for tests that signal a loader while its workers run."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset


class SlowItems(IterableDataset):
    """`count` integer tensors per worker, `seconds` apart; carries the stream fields EpochLoader reads and sets."""

    epoch = start_batch = seed = rank = 0

    def __init__(self, count: int = 4, seconds: float = 0.3) -> None:
        self.count, self.seconds = count, seconds

    def __iter__(self) -> Iterator[torch.Tensor]:
        for index in range(self.count):
            time.sleep(self.seconds)
            yield torch.tensor(index)
