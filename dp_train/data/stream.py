"""Streaming WebDataset shards to DDP ranks and dataloader workers.

Data flows shards -> raw records -> decoded `Sample`s -> augmented `View`s ->
collated batches. Rank and world size are attributes set in the main process
(never looked up inside workers, where spawn/forkserver workers would see a
world size of 1); the worker id comes from `torch.utils.data.get_worker_info`.

Training is an endless, weighted, sample-by-sample mixture of sources with a
fixed number of batches per epoch on every rank. Validation reads every sample
exactly once across all ranks and workers. Bad data is skipped, counted per
source and reported with each batch; a source whose failure share exceeds
`max_bad_fraction` stops the run with one error naming it.

The steps live beside this module: `sources` (a source's shards and raw records), `placement` (which rank and
worker reads what), `samples` (decoding and per-source flags and checks), `health` (bad-record accounting) and
`collate` (views to batches); this module mixes them into the train and validation streams.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from dp_train.data.collate import collate
from dp_train.data.health import DataError, SourceHealth
from dp_train.data.native import native_truth
from dp_train.data.placement import Placement, assign_shards, current_placement
from dp_train.data.samples import USES, decode_record, decoded
from dp_train.data.sources import DEFAULT_READ_TIMEOUT, SourceConfig, raw_records, shuffled
from dp_train.shards import Sample

log = logging.getLogger(__name__)


def sample_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integer parts (seed, epoch, rank, worker, counter)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class _StreamBase(IterableDataset):
    """Common settings of the train and validation streams."""

    def __init__(
        self,
        sources: list[SourceConfig],
        transform,
        batch_size: int,
        seed: int = 0,
        max_bad_fraction: float = 0.05,
        min_records_for_guard: int = 50,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        use: str = "depth",
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("no data sources configured")
        self.sources = list(sources)
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.min_records_for_guard = min_records_for_guard
        self.read_timeout = read_timeout
        if use not in USES:
            raise ValueError(f"stream use {use!r}: choose one of {USES}")
        self.use = use
        """What the samples feed (see `apply_flags`): "depth" or "fov" training, or "eval"."""
        self.rank, self.world_size, self.epoch, self.start_batch = 0, 1, 0, 0

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Record this process's rank; called in the main process before workers start."""
        self.rank, self.world_size = rank, world_size

    def _health(self) -> list[SourceHealth]:
        return [SourceHealth(s.name, self.max_bad_fraction, self.min_records_for_guard) for s in self.sources]

    def _batch(self, samples: list[tuple[int, Sample]], health: list[SourceHealth], seeds: list[int]) -> dict:
        views = [self.transform(sample, seed) for (_, sample), seed in zip(samples, seeds)]
        return collate(views, [i for i, _ in samples], [s for _, s in samples], [h.take_unreported() for h in health])


class TrainStream(_StreamBase):
    """Endless weighted mixture of sources; the same number of batches on every rank each epoch."""

    def __init__(self, sources: list[SourceConfig], transform, batch_size: int, samples_per_epoch: int,
                 shuffle_buffer: int = 32, **kwargs) -> None:
        super().__init__(sources, transform, batch_size, **kwargs)
        self.samples_per_epoch = samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.resume_records: dict[int, list[int]] = {}
        """Worker id -> raw records per source already trained on in this epoch (set on resume)."""
        self.set_weights([s.weight for s in self.sources])

    def set_weights(self, weights: list[float]) -> None:
        """Use one mixture for the whole run."""
        self.set_schedule([(0, weights)])

    def set_schedule(self, schedule: list[tuple[int, list[float]]]) -> None:
        """Mixture per training phase: (first global batch index, source weights), ascending.

        Workers pick the weights from the global batch index themselves, so a
        curriculum switch lands on the exact batch, also after a resume.
        """
        parsed = []
        for start, weights in sorted(schedule, key=lambda item: item[0]):
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (len(self.sources),) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f"mixing weights {weights.tolist()} must be {len(self.sources)} non-negative numbers")
            parsed.append((int(start), weights / weights.sum()))
        if not parsed or parsed[0][0] != 0:
            raise ValueError("a mixture schedule must start at batch 0")
        self.schedule = parsed

    def weights_at(self, global_batch: int) -> np.ndarray:
        """Normalised source weights in force at a global batch index."""
        return [weights for start, weights in self.schedule if start <= global_batch][-1]

    @property
    def batches_per_epoch(self) -> int:
        """Batches per rank per epoch: the epoch's samples shared by all ranks (at least one)."""
        return max(1, self.samples_per_epoch // (self.batch_size * self.world_size))

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _endless(self, index: int, place: Placement, health: SourceHealth, read: list[int], skip: int
                 ) -> Iterator[Sample]:
        """Pass after pass over one source's shards (each pass reshuffled); no repeat within a pass.

        The first `skip` raw records are passed over undecoded (those a resumed run already
        trained on); every later one taken from the shuffled stream adds one to `read[index]`.
        """
        source = self.sources[index]
        for pass_index in itertools.count():
            pass_seed = sample_seed(self.seed, self.epoch, index, pass_index)
            shards, stride, offset = assign_shards(source.shard_urls(), place, pass_seed)
            rng = np.random.default_rng(sample_seed(pass_seed, place.index))
            produced = False
            records = raw_records(shards, stride, offset, health, source.shard_sizes(), self.read_timeout)
            for record in shuffled(records, self.shuffle_buffer, rng):
                if skip > 0:
                    skip, produced = skip - 1, True
                    continue
                read[index] += 1
                sample = decode_record(record, source, health, self.use, keep_alpha=False)
                if sample is not None:
                    produced = True
                    yield sample
            if not produced:
                raise DataError(f"source {source.name!r}: no readable sample in its shards for worker {place.index}")

    def picks(self, batch_index: int) -> np.ndarray:
        """Source index of each sample of a batch: a pure function of the position, so a resumed run
        draws what the interrupted one would have."""
        weights = self.weights_at(self.epoch * self.batches_per_epoch + batch_index)
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, self.rank, batch_index))
        return rng.choice(len(self.sources), size=self.batch_size, p=weights)

    def _slot(self, place: Placement) -> Placement:
        """The placement whose data this worker process continues: batch b always comes from slot
        b % num_workers (its shards, shuffles and position), while the DataLoader hands the first
        batch after `start_batch` to worker process 0, the next to 1, and so on."""
        slot = (self.start_batch + place.worker) % place.num_workers
        return dataclasses.replace(place, worker=slot)

    def __iter__(self) -> Iterator[dict]:
        """This worker's batches from `start_batch` on; each reports `batch_index`, `worker` and
        `records_read` (raw records taken per source for it), from which a resumed run finds its place."""
        process = current_placement(self.rank, self.world_size)
        place = self._slot(process)
        health = self._health()
        skips = self.resume_records.get(place.worker, [0] * len(self.sources))
        read = [0] * len(self.sources)
        streams = [self._endless(i, place, health[i], read, skips[i]) for i in range(len(self.sources))]
        for batch_index in range(self.start_batch + process.worker, self.batches_per_epoch, process.num_workers):
            read[:] = [0] * len(self.sources)
            samples = [(int(i), next(streams[i])) for i in self.picks(batch_index)]
            seeds = [sample_seed(self.seed, self.epoch, self.rank, batch_index, k) for k in range(self.batch_size)]
            batch = self._batch(samples, health, seeds)
            batch["batch_index"] = torch.tensor(batch_index)
            batch["worker"] = torch.tensor(place.worker)
            batch["records_read"] = torch.tensor(read, dtype=torch.long)
            yield batch


class ValStream(_StreamBase):
    """Every validation sample exactly once across all ranks and workers, in a fixed order.

    When the sources are given as shard indexes (sample counts known), every rank yields the same
    number of batches: ranks with fewer samples add padding batches (`padding` True for each of
    their samples), which the model runs but metrics skip. Sharded models (FSDP) need this: each
    forward pass gathers parameters from all ranks, so a rank that stops early hangs the others.
    With `native_truth` set, batches also carry the ground truth at its own resolution
    (`data/native.py`), against which the metrics are computed.
    """

    native_truth = False

    def __init__(self, sources: list[SourceConfig], transform, batch_size: int, use: str = "eval", **kwargs) -> None:
        super().__init__(sources, transform, batch_size, use=use, **kwargs)

    def __iter__(self) -> Iterator[dict]:
        place = current_placement(self.rank, self.world_size)
        health = self._health()
        last = None
        for index, source in enumerate(self.sources):
            shards, stride, offset = assign_shards(source.shard_urls(), place, order_seed=None)
            pending: list[tuple[int, Sample]] = []
            records = raw_records(shards, stride, offset, health[index], source.shard_sizes(), self.read_timeout)
            for sample in decoded(records, source, health[index], self.use):  # a full batch waits for the next sample:
                if len(pending) == self.batch_size:  # the last one carries the source's final bad count
                    yield (last := self._batch(pending, health, [0] * len(pending)))
                    pending = []
                pending.append((index, sample))
            health[index].check_total()
            if pending:
                yield (last := self._batch(pending, health, [0] * len(pending)))
        if place.worker == 0:
            yield from self._padding(last, health)

    def _batch(self, samples: list[tuple[int, Sample]], health: list[SourceHealth], seeds: list[int]) -> dict:
        batch = super()._batch(samples, health, seeds)
        batch["padding"] = torch.zeros(len(samples), dtype=torch.bool)
        if self.native_truth:
            batch |= native_truth([s for _, s in samples])
        return batch

    def _padding(self, template: dict | None, health: list[SourceHealth]) -> Iterator[dict]:
        """The padding batches that bring this rank to the largest rank's batch count."""
        counts = [self.rank_batches(rank) for rank in range(self.world_size)]
        if None in counts:
            if self.world_size > 1:
                log.warning("validation sources without shard indexes: ranks may get different batch counts "
                            "(sharded models need *.index.json sources)")
            return
        missing = max(counts) - counts[self.rank]
        if missing and template is None:
            template = self._batch([(0, self._first_sample(health))], health, [0])
        for _ in range(missing):
            yield template | {"padding": torch.ones_like(template["padding"]),
                              "bad_records": torch.zeros_like(template["bad_records"])}

    def rank_batches(self, rank: int) -> int | None:
        """Batches a rank's workers yield (None when a source's sample counts are unknown)."""
        workers = max(1, get_worker_info().num_workers if get_worker_info() is not None else 1)
        total = 0
        for source in self.sources:
            sizes = source.shard_sizes()
            if sizes is None:
                return None
            for worker in range(workers):
                place = Placement(rank, self.world_size, worker, workers)
                shards, stride, offset = assign_shards(source.shard_urls(), place, order_seed=None)
                samples = sum(len(range(offset, sizes[url], stride)) for url in shards)
                total += -(-samples // self.batch_size)
        return total

    def _first_sample(self, health: list[SourceHealth]) -> Sample:
        """The first decodable sample of the first source (content for padding batches)."""
        source = self.sources[0]
        records = raw_records(source.shard_urls(), 1, 0, health[0], timeout=self.read_timeout)
        return next(decoded(records, source, health[0], self.use))
