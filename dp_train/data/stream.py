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
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info

from dp_train.data.augment import View
from dp_train.data.native import native_truth
from dp_train.shards import Sample, decode_sample, shard_counts, shard_urls
from dp_train.data.shardio import TimedStream

log = logging.getLogger(__name__)

DEFAULT_READ_TIMEOUT = 300.0
"""Seconds a shard may deliver no bytes before it fails (`data.shard_read_timeout`): long enough for a slow
network mount's first byte, short enough that a hung one stops the run instead of hanging it."""


METRIC_DEPTH_LIMITS = (1e-3, 1e5)
"""[min, max] metres a metric depth pixel may hold to be trained on or evaluated: outside (a 1 micron or a
10^30 m depth, from a unit or encoding mistake) its inverse depth would dominate or overflow the loss."""


class DataError(RuntimeError):
    """A source fails too often to train on."""


@dataclass(frozen=True)
class SourceConfig:
    """One dataset in a recipe: its shards, mixing weight and flags.

    Flags left as None are taken from each sample's json; set ones override it.
    """

    name: str
    urls: str | list[str]
    """Shard URL(s): local paths or anything webdataset opens, brace patterns allowed, or a
    local `*.index.json` written with the shards (its shards are read in order)."""
    weight: float = 1.0
    metric: bool | None = None
    synthetic: bool | None = None
    sparse: bool | None = None
    depth_range: tuple[float, float] | None = None
    """[min, max] metres: ground-truth depths outside are invalid (not trained on, not evaluated), e.g. the
    per-benchmark evaluation ranges of the paper's Tab. 18 in recipes/eval.yaml. Bounds are inclusive (the
    paper does not say); applies to metric samples only (relative depth has no metres)."""

    def __post_init__(self) -> None:
        if self.depth_range is not None:
            low, high = self.depth_range
            if not 0 <= low < high:
                raise ValueError(f"source {self.name!r}: depth_range {list(self.depth_range)} must be [min, max] "
                                 "metres with 0 <= min < max")

    def shard_urls(self) -> list[str]:
        """Every shard URL, brace patterns expanded, in a stable order."""
        patterns = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        urls = [
            url
            for pattern in patterns
            for url in (shard_urls(pattern) if pattern.endswith(".index.json") else braceexpand(pattern))
        ]
        if not urls:
            raise ValueError(f"source {self.name!r} has no shard URLs")
        return urls

    def check_local_shards(self) -> None:
        """Raise DataError when none of the source's shards exists (local paths only: URLs and `pipe:` commands
        are opened by webdataset), so a typo in `urls` stops the run at setup, not in the first data worker."""
        urls = self.shard_urls()
        local = [url for url in urls if "://" not in url and not url.startswith("pipe:")]
        if local and len(local) == len(urls) and not any(Path(url).is_file() for url in local):
            raise DataError(f"source {self.name!r}: none of its {len(local)} shard file(s) exists (first: {local[0]})")

    def shard_sizes(self) -> dict[str, int] | None:
        """Samples per shard URL when every pattern is a shard index (None: unknown without reading)."""
        patterns = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        if not all(p.endswith(".index.json") for p in patterns):
            return None
        return {url: count for p in patterns for url, count in zip(shard_urls(p), shard_counts(p))}


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


def describe_error(err: BaseException) -> str:
    """`Type: message` on one line; OS errors by their text ("No such file or directory"), not their errno."""
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    return f"{type(err).__name__}: {err.args[0] if err.args else err}"


def raw_records(shards: list[str], stride: int, offset: int, health: SourceHealth,
                sizes: dict[str, int] | None = None, timeout: float = DEFAULT_READ_TIMEOUT) -> Iterator[dict]:
    """Raw webdataset records of `shards`, keeping every `stride`-th from `offset`.

    A shard that cannot be opened, is cut short or stalls (delivers no bytes for `timeout` seconds) counts as
    one bad record, or, with `sizes` (samples per shard from its index), as the samples of it this reader
    would have kept and did not: a lost shard weighs what it held (webdataset may report the same broken
    stream at several levels: counted once). A shard that ends without error with fewer or more records than
    its index lists (a damaged tar header ends a tar early) counts the difference as bad. A key met again in
    this pass is a bad record, not read twice.
    """
    keys: set[str] = set()
    for url in shards:
        failed: list[Exception] = []

        def on_error(err: Exception) -> bool:
            failed.append(err)
            return True

        with TimedStream(url, timeout) as stream:
            files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=on_error)
            count = -1
            for count, record in enumerate(wds.tariterators.group_by_keys(files, handler=on_error)):
                if count % stride == offset:
                    if record["__key__"] in keys:
                        health.record_bad(f"{record['__key__']} in {url}: duplicate sample key (already read)")
                        continue
                    keys.add(record["__key__"])
                    yield record
        expected = sizes.get(url) if sizes is not None else None
        lost = lost_records(count + 1, expected, stride, offset, bool(failed))
        if lost:
            what = describe_error(failed[0]) if failed else "its tar ended"
            listed = f"; its index lists {expected}" if expected is not None else ""
            health.record_bad(f"shard {url}: {what} after {count + 1} samples{listed}", lost)


def lost_records(read: int, expected: int | None, stride: int, offset: int, failed: bool) -> int:
    """Bad records for a shard of which `read` records were read (`expected`: its index's count, None when
    unknown): none for a shard read whole, else this reader's share (every `stride`-th from `offset`) of the
    difference, at least one."""
    if not failed and (expected is None or read == expected):
        return 0
    if expected is None:
        return 1
    return max(abs(len(range(offset, expected, stride)) - len(range(offset, read, stride))), 1)


def shuffled(records: Iterator[dict], buffer: int, rng: np.random.Generator) -> Iterator[dict]:
    """Shuffle a stream through a buffer of `buffer` raw (still compressed) records."""
    pool: list[dict] = []
    for record in records:
        pool.append(record)
        if len(pool) >= buffer:
            yield pool.pop(int(rng.integers(len(pool))))
    rng.shuffle(pool)
    yield from pool


def decoded(records: Iterator[dict], source: SourceConfig, health: SourceHealth, use: str = "eval"
            ) -> Iterator[Sample]:
    """Decode and validate records for `use` (see `apply_flags`); bad ones are counted and skipped."""
    for record in records:
        sample = decode_record(record, source, health, use)
        if sample is not None:
            yield sample


def decode_record(record: dict, source: SourceConfig, health: SourceHealth, use: str = "depth",
                  keep_alpha: bool = True) -> Sample | None:
    """The record as a Sample, or None (counted as bad) when it cannot be decoded or fails a check.

    With `keep_alpha` False the matting alpha is not decoded: only validation's
    boundary recall reads it, and at 1536 px it costs training ~10 ms a sample.
    """
    if not keep_alpha:
        record.pop("alpha.png", None)
    try:
        sample = apply_flags(decode_sample(record), source, use)
    except Exception as err:  # noqa: BLE001 - any decode failure is one bad record
        health.record_bad(f"{record.get('__key__', '?')} in {record.get('__url__', '?')}: {err}")
        return None
    health.record_ok()
    return sample


USES = ("depth", "fov", "eval")
"""What a stream's samples feed: the depth objective, the FOV objective (the module's `mode`), or evaluation."""


def apply_flags(sample: Sample, source: SourceConfig, use: str = "depth") -> Sample:
    """Override the sample's flags with the source's, apply its depth range, and refuse what `use` cannot take.

    Every depth sample needs a stored valid pixel and metric ones a focal length (the health check). A
    sample written without depth (`depth_kind` "none": a focal-only photo, a matte) is never refused for
    having no depth pixel, but depth training refuses it, and FOV training any sample without a focal
    length. Training also refuses a depth sample whose pixels all fall outside the depth range (nothing
    to learn from); evaluation keeps it, and counts it as an image with nothing to score.
    """
    sample = with_source_flags(sample, source)
    refusal = use_problem(sample, use)
    if refusal:
        raise ValueError(f"{sample.key}: {refusal}")
    if not sample.meta.has_depth:
        return sample
    for limits in (METRIC_DEPTH_LIMITS, source.depth_range):
        if sample.meta.metric and limits is not None:
            sample.valid = sample.valid & (sample.depth >= limits[0]) & (sample.depth <= limits[1])
        if limits is METRIC_DEPTH_LIMITS and not sample.valid.any():
            raise ValueError(f"{sample.key}: no valid depth pixel (all zero, masked out or beyond "
                             f"{METRIC_DEPTH_LIMITS} m)")
    if use != "eval" and not sample.valid.any():
        raise ValueError(f"{sample.key}: no valid depth pixel inside the depth range")
    return sample


def with_source_flags(sample: Sample, source: SourceConfig) -> Sample:
    """The sample with the flags its source sets (`metric` only on samples written with depth)."""
    flags = ("metric", "synthetic", "sparse") if sample.meta.has_depth else ("synthetic", "sparse")
    changes = {k: getattr(source, k) for k in flags if getattr(source, k) is not None}
    if changes:
        sample.meta = dataclasses.replace(sample.meta, **changes)
    return sample


def use_problem(sample: Sample, use: str) -> str | None:
    """Why a stream feeding `use` cannot take this sample (None: it can)."""
    meta = sample.meta
    has_focal = bool(meta.f_px and meta.f_px > 0)
    if meta.metric and not has_focal:
        return "a metric sample without a positive focal length"
    if use == "depth" and not meta.has_depth:
        return "written without depth (depth_kind 'none': a photo or matte set); depth training needs depth"
    if use == "fov" and not has_focal:
        return "without a focal length; the FOV stage trains on known focal lengths"
    return None


def first_sample(source: SourceConfig, timeout: float = DEFAULT_READ_TIMEOUT) -> Sample | None:
    """The source's first decodable sample as stored (no flags applied), or None when its first record
    cannot be read: the stream's health checks report that once the data is read."""
    health = SourceHealth(source.name, max_bad_fraction=1.0, min_records=1)
    try:
        record = next(raw_records(source.shard_urls()[:1], 1, 0, health, timeout=timeout), None)
        return None if record is None else decode_sample(record)
    except Exception:  # noqa: BLE001 - an unreadable source is reported by the stream, not here
        return None


def check_source_use(key: str, sources: list[SourceConfig], use: str) -> None:
    """Refuse, before any work, a source whose samples a stream feeding `use` cannot take (judged by its
    first sample, with the source's flags): e.g. a focal-only photo set in a depth-mode mixture."""
    for source in sources:
        sample = first_sample(source)
        problem = None if sample is None else use_problem(with_source_flags(sample, source), use)
        if problem:
            raise DataError(f"{key}: source {source.name!r} cannot be trained on in {use} mode: "
                            f"its sample {sample.key} is {problem}")


def collate(views: list[View], sources: list[int], flags: list[Sample], bad_counts: list[int]) -> dict:
    """Stack views into a batch; images stay uint8 until they reach the device (see `normalize_images`).

    "alpha" (zeros where a sample has none, see "has_alpha") is present only when some sample has one.
    """
    batch = {
        "key": [s.key for s in flags],
        "image": torch.from_numpy(np.stack([np.stack(cv2.split(v.image)) for v in views])),  # HWC -> CHW, fast
        "target": torch.from_numpy(np.stack([v.target for v in views]))[:, None],
        "valid": torch.from_numpy(np.stack([v.valid for v in views]))[:, None],
        "has_alpha": torch.tensor([v.alpha is not None for v in views]),
        "f_px": torch.tensor([v.f_px for v in views], dtype=torch.float32),
        "metric": torch.tensor([s.meta.metric for s in flags]),
        "has_depth": torch.tensor([s.meta.has_depth for s in flags]),
        "disparity": torch.tensor([s.meta.depth_kind == "disparity" for s in flags]),
        "synthetic": torch.tensor([s.meta.synthetic for s in flags]),
        "sparse": torch.tensor([s.meta.sparse for s in flags]),
        "source": torch.tensor(sources, dtype=torch.long),
        "bad_records": torch.tensor(bad_counts, dtype=torch.long),
    }
    if batch["has_alpha"].any():
        size = views[0].image.shape[0]
        alpha = [v.alpha if v.alpha is not None else np.zeros((size, size), np.float32) for v in views]
        batch["alpha"] = torch.from_numpy(np.stack(alpha))[:, None]
    return batch


def normalize_images(batch: dict) -> dict:
    """uint8 images -> float in [-1, 1] (done on the device, after transfer, to move 4x fewer bytes)."""
    if batch["image"].dtype == torch.uint8:
        batch["image"] = batch["image"].float().div_(127.5).sub_(1.0)
    return batch


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
