"""The LightningDataModule that streams weighted shard mixtures to every rank."""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import torch
from torch.utils.data import DataLoader

from dp_train.data.augment import AugmentConfig, EvalTransform, TrainTransform
from dp_train.data.repeats import EvaluatedOnce
from dp_train.data.stream import (
    DEFAULT_READ_TIMEOUT, SourceConfig, TrainStream, ValStream, normalize_images, sample_seed,
)
from dp_train.ranges import POSITIVE, SHARE, Range, check_ranges
from dp_train.resume import TrainPosition, gather_per_rank, own_entry, setting_changes
from dp_train.slurm import scheduler_signals_blocked, take_scheduler_signals_in_worker

log = logging.getLogger(__name__)

START_METHODS = ("auto", None, "fork", "spawn", "forkserver")
"""Accepted `worker_start_method` values."""
DATA_RANGES: dict[str, Range] = {
    "batch_size": Range(1), "val_batch_size": Range(1), "samples_per_epoch": Range(1), "shuffle_buffer": Range(1),
    "image_size": Range(1), "num_workers": Range(0), "max_bad_fraction": SHARE, "shard_read_timeout": POSITIVE,
}
"""Range of each numeric `data` value (a batch of 0 divides by zero, -1 workers fails in torch). Checked in the
constructor, not as jsonargparse restricted types (`PositiveInt`, ...) in its signature: LightningCLI would pass
instances of those types on, the checkpoint would hold them, and `weights_only` loading (every resume) refuses
them."""
FORKSERVER_PRELOAD = ("dp_train.data.datamodule", "torch.utils.data._utils.worker")
"""Modules a fork server imports once, before forking any worker: each worker then starts in ~0.1 s instead
of importing the data pipeline itself (~5 s, at every epoch and validation)."""


def worker_context(method: str | None) -> BaseContext | None:
    """The multiprocessing context of dataloader workers (None: the platform default); a fork server
    preloads the data pipeline's modules."""
    if method is None:
        return None
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    return context


def init_worker(worker_id: int, owner: int) -> None:
    """Set up a dataloader worker: OpenCV on one thread (a fresh process would start one per core; a forked
    worker already runs single-threaded, `stop_opencv_threads`, and is left alone), and the scheduler's
    signals taken by a thread that lets only `owner` (the loading process) or the worker's parent stop it."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    take_scheduler_signals_in_worker(owner)


def stop_opencv_threads() -> None:
    """Run OpenCV without its thread pool in the process that starts dataloader workers. A worker forked
    while a pool thread holds the pool's lock inherits the lock held and waits forever at its first OpenCV
    call (seen in CI: a forked worker stuck in `cv2.setNumThreads`). Only the loading process is affected:
    with workers, it does little image work."""
    cv2.setNumThreads(0)


class EpochLoader(DataLoader):
    """A DataLoader over a stream that tells the stream where it starts before workers are created.

    `position_fn` returns (epoch, batches of this epoch already trained): after
    a mid-epoch resume the stream continues at the right global batch index, so
    the curriculum's mixture schedule stays aligned with the optimizer steps.
    Without it, each iteration starts the next epoch from its first batch. `on_start` is called as each
    iteration begins (an evaluation pass starts its record of samples seen).

    Each iteration draws its workers' base seed from a generator of its own, seeded by (data seed,
    epoch, rank), not from torch's global RNG: the RNG state a checkpoint holds then does not depend
    on whether the next epoch's workers were started before it was saved (an uninterrupted run starts
    them after the epoch-end checkpoint, a resumed run before restoring the RNG), nor on validation.
    Workers (and their fork server) start with the scheduler's signals blocked: SLURM signals every
    process of the job, and only the training process may act on them.
    """

    def __init__(self, dataset, position_fn: Callable[[], tuple[int, int]] | None = None,
                 on_start: Callable[[], None] | None = None, **kwargs) -> None:
        super().__init__(dataset, batch_size=None, generator=torch.Generator(), **kwargs)
        self._position_fn = position_fn
        self._on_start = on_start
        self._next_epoch = 0

    def __iter__(self) -> Iterator:
        if self._on_start is not None:
            self._on_start()
        if self._position_fn is not None:
            self.dataset.epoch, self.dataset.start_batch = self._position_fn()
        else:
            self.dataset.epoch, self.dataset.start_batch = self._next_epoch, 0
            self._next_epoch += 1
        self.generator.manual_seed(sample_seed(self.dataset.seed, self.dataset.epoch, self.dataset.rank))
        if self.num_workers == 0:
            return super().__iter__()
        with scheduler_signals_blocked():
            return super().__iter__()


class DepthDataModule(L.LightningDataModule):
    """Train and validation streams of Depth Pro samples from WebDataset shards, configured from a recipe.

    Args:
        train_sources: datasets mixed for training, sample by sample, by weight.
        val_sources: datasets read once, in full, for validation.
        test_sources: benchmark datasets for `test` (read like validation).
        image_size: network input side (4 x the ViT input).
        batch_size: per-rank batch size.
        global_batch_size: samples per optimizer step over all ranks (paper, Tab. 16: 128). Sets the trainer's
            gradient accumulation to global / (world size x batch_size), so one recipe keeps its batch on 8, 16
            or 64 GPUs; it must divide exactly. None: the trainer's `accumulate_grad_batches` stands.
        samples_per_epoch: samples in one training epoch over all ranks.
        num_workers: dataloader workers per rank.
        worker_start_method: multiprocessing start method of the workers: "fork", "spawn", "forkserver",
            None (the platform default) or "auto": "forkserver" in multi-process runs, where a worker
            forked from a rank whose communication threads hold a lock at that moment can deadlock,
            and the platform default otherwise (fork on Linux: workers start fastest).
        augment: training augmentation settings.
        shuffle_buffer: raw records per source shuffled in each worker.
        seed: seeds every shuffle, mixture draw and augmentation.
        max_bad_fraction: a source failing more often than this stops the run.
        shard_read_timeout: seconds a shard may deliver no data (a hung network mount) before it fails like an
            unreadable shard, instead of hanging the loader.
    """

    def __init__(
        self,
        train_sources: list[SourceConfig] | None = None,
        val_sources: list[SourceConfig] | None = None,
        test_sources: list[SourceConfig] | None = None,
        image_size: int = 1536,
        batch_size: int = 1,
        global_batch_size: int | None = None,
        val_batch_size: int | None = None,
        samples_per_epoch: int = 10_000,
        num_workers: int = 4,
        worker_start_method: str | None = "auto",
        augment: AugmentConfig | None = None,
        shuffle_buffer: int = 32,
        seed: int = 0,
        max_bad_fraction: float = 0.05,
        shard_read_timeout: float = DEFAULT_READ_TIMEOUT,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        self.train_sources = list(train_sources or [])
        self.val_sources = list(val_sources or [])
        self.test_sources = list(test_sources or [])
        self.image_size = image_size
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.samples_per_epoch = samples_per_epoch
        self.num_workers = num_workers
        if worker_start_method not in START_METHODS:
            raise ValueError(f"data.worker_start_method={worker_start_method!r}: choose one of {START_METHODS}")
        self.worker_start_method = worker_start_method
        self.augment = augment or AugmentConfig()
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.shard_read_timeout = shard_read_timeout
        self.pin_memory = pin_memory
        check_ranges("data", vars(self), DATA_RANGES)
        self.train_position = TrainPosition()
        self._resumed_settings: dict[str, Any] = {}
        """The checkpoint's `_stream_settings` (empty: not resumed, or a checkpoint without them)."""
        self.train_stream: TrainStream | None = None
        self.val_stream: ValStream | None = None
        self.test_stream: ValStream | None = None
        self._evaluated = EvaluatedOnce()

    def _distribution(self) -> tuple[int, int]:
        """(rank, world size) of this process, from the trainer when attached."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def gradient_accumulation(self, trainer: L.Trainer) -> int:
        """Batches per optimizer step that make `global_batch_size` on `trainer`'s ranks (its own setting
        without one); a global batch that does not divide, or that contradicts an explicit
        `trainer.accumulate_grad_batches`, is a ValueError naming both."""
        if self.global_batch_size is None:
            return trainer.accumulate_grad_batches
        per_step = trainer.world_size * self.batch_size
        if self.global_batch_size % per_step:
            raise ValueError(f"data.global_batch_size={self.global_batch_size} is not a multiple of world size "
                             f"{trainer.world_size} x data.batch_size {self.batch_size} = {per_step}")
        accumulation = self.global_batch_size // per_step
        if trainer.accumulate_grad_batches not in (1, accumulation):
            raise ValueError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} contradicts "
                             f"data.global_batch_size={self.global_batch_size} (which needs {accumulation}); set one")
        return accumulation

    def setup(self, stage: str | None = None) -> None:
        """Set the gradient accumulation (fit with `global_batch_size`), build the streams and hand them this
        process's rank (workers must not look it up). `test` and `validate` evaluate against ground truth at
        its own resolution; validation during `fit` against ground truth resized (nearest) to the network
        input, which is cheaper."""
        rank, world_size = self._distribution()
        if stage == "fit" and self.trainer is not None and self.global_batch_size is not None:
            self.trainer.accumulate_grad_batches = self.gradient_accumulation(self.trainer)
        for source in self.train_sources + self.val_sources + self.test_sources:
            source.check_local_shards()
        common = {"seed": self.seed, "max_bad_fraction": self.max_bad_fraction,
                  "read_timeout": self.shard_read_timeout}
        if self.train_sources and self.train_stream is None:
            self.train_stream = TrainStream(
                self.train_sources, TrainTransform(self.image_size, self.augment), self.batch_size,
                self.samples_per_epoch,
                shuffle_buffer=self.shuffle_buffer, **common,
            )
        if self.val_sources and self.val_stream is None:
            self.val_stream = ValStream(self.val_sources, EvalTransform(self.image_size), self.val_batch_size, **common)
        if self.test_sources and self.test_stream is None:
            self.test_stream = ValStream(self.test_sources, EvalTransform(self.image_size), self.val_batch_size, **common)
        for stream in (self.train_stream, self.val_stream, self.test_stream):
            if stream is not None:
                stream.set_distributed(rank, world_size)
        if self.val_stream is not None:  # validation inside `fit` stays at network resolution (cheaper)
            self.val_stream.native_truth = stage == "validate"
        if self.test_stream is not None:
            self.test_stream.native_truth = True

    def _start_method(self) -> str | None:
        """The workers' start method: "auto" resolved for this run's world size."""
        if self.worker_start_method != "auto":
            return self.worker_start_method
        return "forkserver" if self._distribution()[1] > 1 else None

    def _loader(self, stream, position_fn: Callable[[], tuple[int, int]] | None = None,
                on_start: Callable[[], None] | None = None) -> EpochLoader:
        workers = self.num_workers
        if workers > 0:
            stop_opencv_threads()
        return EpochLoader(
            stream,
            position_fn=position_fn,
            on_start=on_start,
            num_workers=workers,
            worker_init_fn=functools.partial(init_worker, owner=os.getpid()) if workers > 0 else None,
            multiprocessing_context=worker_context(self._start_method()) if workers > 0 else None,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            prefetch_factor=2 if workers > 0 else None,
        )

    def train_dataloader(self) -> EpochLoader:
        """Endless weighted mixture, a fixed number of batches per epoch on every rank."""
        if self.train_stream is None:
            raise ValueError("the recipe has no data.train_sources")
        if self.trainer is None:
            return self._loader(self.train_stream)
        return self._loader(self.train_stream, self._train_start)

    def _train_start(self) -> tuple[int, int]:
        """(epoch, batches of it already trained) from the trainer; on a resume, also tells the
        stream how many raw records each worker already consumed, so it continues exactly.

        Lightning creates the iterator of a resumed run before it settles its own counters. A
        checkpoint saved after an epoch's last batch (a step checkpoint, a preemption save) still
        reports the finished epoch here, but Lightning then moves on to the next epoch and takes its
        batches from this iterator: it must start that epoch (continuing "after the last batch" would
        yield nothing, and Lightning would count the empty pass as one more epoch, skipping a whole
        epoch of data). A checkpoint saved once the epoch was closed (`on_train_epoch_end`) reports
        it too, but there Lightning first finishes that epoch with this iterator, then starts a new
        one: it must be empty."""
        trainer = self.trainer
        epoch, done = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready
        epochs = trainer.fit_loop.epoch_progress.current  # processed > completed: closed, not yet counted
        if done >= self.train_stream.batches_per_epoch and epochs.processed == epochs.completed:
            epoch, done = epoch + 1, 0
        changes = self._stream_changes() if done else []
        if changes:
            log.warning("resuming mid-epoch with %s: the rest of epoch %d is drawn anew, not continued exactly "
                        "(some of its samples may repeat)", "; ".join(changes), epoch)
            self.train_position = TrainPosition()
        self.train_stream.resume_records = self.train_position.skips_for(epoch) if done else {}
        return epoch, done

    def _stream_settings(self) -> dict[str, Any]:
        """The settings that decide which raw records the train stream reads in which order (the position
        a checkpoint holds is only meaningful under the same ones). Shards count by file name: a job that
        copies them to another folder (node-local scratch) still continues exactly."""
        sources = [dataclasses.asdict(source) | {"urls": [Path(url).name for url in source.shard_urls()]}
                   for source in self.train_sources]
        return {"data.batch_size": self.batch_size, "data.samples_per_epoch": self.samples_per_epoch,
                "data.seed": self.seed, "data.shuffle_buffer": self.shuffle_buffer, "data.train_sources": sources}

    def _stream_changes(self) -> list[str]:
        """How this run's stream settings and dataloader workers differ from the checkpoint's (empty: the
        stream continues exactly). A source added or removed since the checkpoint is such a change, not an
        error: the weights, optimizer and schedules are those of the checkpoint whatever the data, so a run may
        go on with more (or fewer) sets; only the position inside the epoch cannot be kept."""
        recorded = self.train_position.workers
        changes = setting_changes(self._resumed_settings, self._stream_settings())
        if recorded not in (0, max(1, self.num_workers)):
            changes.insert(0, f"data.num_workers {self.num_workers} (checkpoint: {recorded})")
        sources = {len(counts) for counts in self.train_position.records.values()} - {len(self.train_sources)}
        if sources and "data.train_sources" not in self._resumed_settings:  # a checkpoint without the settings
            changes.append(f"{len(self.train_sources)} data.train_sources (checkpoint: {sources.pop()})")
        return changes

    def val_dataloader(self) -> EpochLoader | list:
        """Every validation sample exactly once across ranks and workers, a sample held twice by its shards
        included (empty without val sources)."""
        return self._loader(self.val_stream, on_start=self._evaluated.start) if self.val_stream is not None else []

    def test_dataloader(self) -> EpochLoader:
        """Every test sample exactly once across ranks and workers."""
        if self.test_stream is None:
            raise ValueError("the recipe has no data.test_sources")
        return self._loader(self.test_stream, on_start=self._evaluated.start)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Account each trained batch's raw records per worker (the stream position a resume needs); in an
        evaluation batch, samples this pass already scored become padding (data/repeats.py)."""
        if "records_read" in batch and self.trainer is not None and self.trainer.training:
            self.train_position.add(self.trainer.current_epoch, int(batch["worker"]), max(1, self.num_workers),
                                    batch["records_read"].tolist())
        return self._evaluated.mark_repeats(batch) if "padding" in batch else batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's train-stream position (a collective: Lightning calls it on all ranks)."""
        return {"train_position": gather_per_rank(dataclasses.asdict(self.train_position)),
                "train_settings": self._stream_settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's stream position from a checkpoint."""
        if "train_position" in state:
            entry = own_entry(state["train_position"], "data-stream position")
            records = {int(worker): list(counts) for worker, counts in entry["records"].items()}
            self.train_position = TrainPosition(entry["epoch"], entry["workers"], records)
        self._resumed_settings = state.get("train_settings", {})

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Normalise uint8 images to [-1, 1] on the device."""
        return normalize_images(batch)

    def source_names(self, split: str = "train") -> list[str]:
        """Names of the sources in batch `source` id order."""
        sources = {"train": self.train_sources, "val": self.val_sources, "test": self.test_sources}[split]
        return [s.name for s in sources]

    def set_mixture_schedule(self, schedule: list[tuple[int, dict[str, float]]]) -> None:
        """Set (first global batch, {source name: weight}) phases; unnamed sources get weight 0."""
        names = self.source_names("train")
        unknown = {n for _, weights in schedule for n in weights} - set(names)
        if unknown:
            raise ValueError(f"mixture names unknown sources {sorted(unknown)}; sources are {names}")
        self.train_stream.set_schedule([(start, [w.get(n, 0.0) for n in names]) for start, w in schedule])
