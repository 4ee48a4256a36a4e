"""Which rank and dataloader worker reads what: the global worker index and each worker's share of a source's
shards (whole shards when there are enough, else every n-th sample of all of them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import get_worker_info

@dataclass(frozen=True)
class Placement:
    """Where this iterator runs: the global worker index among all ranks' workers."""

    rank: int
    world_size: int
    worker: int
    num_workers: int

    @property
    def index(self) -> int:
        """Global worker index in [0, world_size * num_workers)."""
        return self.rank * self.num_workers + self.worker

    @property
    def total(self) -> int:
        """Number of workers across all ranks."""
        return self.world_size * self.num_workers


def current_placement(rank: int, world_size: int) -> Placement:
    """Combine the main process's rank with this worker's id (worker 0 of 1 without workers)."""
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return Placement(rank, world_size, worker, num_workers)


def assign_shards(urls: list[str], place: Placement, order_seed: int | None) -> tuple[list[str], int, int]:
    """This worker's share of `urls` as (shards to read, sample stride, sample offset).

    With at least one shard per worker, shards are dealt round-robin (after an
    optional seeded shuffle) and every sample of them is kept. With fewer
    shards than workers, every worker reads all shards and keeps every
    `total`-th sample, so no worker is idle and no sample is read twice.
    """
    order = list(urls)
    if order_seed is not None:
        np.random.default_rng(order_seed).shuffle(order)
    if len(order) >= place.total:
        return order[place.index :: place.total], 1, 0
    return order, place.total, place.index
