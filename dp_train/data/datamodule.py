"""The LightningDataModule that streams weighted shard mixtures to every rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L

from dp_train.data.augment import AugmentConfig, EvalTransform, TrainTransform
from dp_train.data.loader import START_METHODS, EpochLoader, epoch_loader, resolve_start_method
from dp_train.data.repeats import EvaluatedOnce
from dp_train.data.collate import normalize_images
from dp_train.data.sources import DEFAULT_READ_TIMEOUT, SourceConfig
from dp_train.data.stream import TrainStream, ValStream
from dp_train.data.stream_position import StreamPosition, resume_point, stream_settings
from dp_train.utils.ranges import POSITIVE, SHARE, Range, check_ranges

DATA_RANGES: dict[str, Range] = {
    "batch_size": Range(1), "val_batch_size": Range(1), "samples_per_epoch": Range(1), "shuffle_buffer": Range(1),
    "image_size": Range(1), "num_workers": Range(0), "max_bad_fraction": SHARE, "shard_read_timeout": POSITIVE,
}
"""Range of each numeric `data` value (a batch of 0 divides by zero, -1 workers fails in torch). Checked in the
constructor, not as jsonargparse restricted types (`PositiveInt`, ...) in its signature: LightningCLI would pass
instances of those types on, the checkpoint would hold them, and `weights_only` loading (every resume) refuses
them."""


class DepthDataModule(L.LightningDataModule):
    """Train and validation streams of Depth Pro samples from WebDataset shards, configured from a recipe.

    Args:
        train_sources: datasets mixed for training, sample by sample, by weight.
        val_sources: datasets read once, in full, for validation.
        guard_sources: datasets the run never trains on, validated after `val_sources` (ours): the zero-shot
            quality a fine-tuning run must keep (dp_train/evaluation/guard.py: `GuardedSelection`).
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
            unreadable shard, instead of hanging the loader. Lower it to notice a hung mount sooner:
            `--data.shard_read_timeout=30`, or `shard_read_timeout: 30` under `data:` in a recipe.
    """

    def __init__(
        self,
        train_sources: list[SourceConfig] | None = None,
        val_sources: list[SourceConfig] | None = None,
        test_sources: list[SourceConfig] | None = None,
        guard_sources: list[SourceConfig] | None = None,
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
        self.guard_sources = list(guard_sources or [])
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
        self.stream_position = StreamPosition()
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
        for source in self.train_sources + self.sources("val") + self.test_sources:
            source.check_local_shards()
        common = {"seed": self.seed, "max_bad_fraction": self.max_bad_fraction,
                  "read_timeout": self.shard_read_timeout}
        if self.train_sources and self.train_stream is None:
            self.train_stream = TrainStream(
                self.train_sources, TrainTransform(self.image_size, self.augment), self.batch_size,
                self.samples_per_epoch, shuffle_buffer=self.shuffle_buffer, use=self._training_use(), **common,
            )
        if self.sources("val") and self.val_stream is None:
            self.val_stream = ValStream(self.sources("val"), EvalTransform(self.image_size), self.val_batch_size, **common)
        if self.test_sources and self.test_stream is None:
            self.test_stream = ValStream(self.test_sources, EvalTransform(self.image_size), self.val_batch_size, **common)
        for stream in (self.train_stream, self.val_stream, self.test_stream):
            if stream is not None:
                stream.set_distributed(rank, world_size)
        if self.val_stream is not None:  # validation inside `fit` stays at network resolution (cheaper)
            self.val_stream.native_truth = stage == "validate"
        if self.test_stream is not None:
            self.test_stream.native_truth = True

    def _training_use(self) -> str:
        """What the training samples feed: the trainer's module's `training_use` ("depth", "fov" or "distill";
        "depth" alone)."""
        return getattr(getattr(self.trainer, "lightning_module", None), "training_use", "depth")

    def _loader(self, stream: TrainStream | ValStream, position_fn: Callable[[], tuple[int, int]] | None = None,
                on_start: Callable[[], None] | None = None) -> EpochLoader:
        """A loader over `stream` with this recipe's workers, started as `worker_start_method` says."""
        method = resolve_start_method(self.worker_start_method, self._distribution()[1])
        return epoch_loader(stream, self.num_workers, method, self.pin_memory, position_fn, on_start)

    def train_dataloader(self) -> EpochLoader:
        """Endless weighted mixture, a fixed number of batches per epoch on every rank."""
        if self.train_stream is None:
            raise ValueError("the recipe has no data.train_sources")
        if self.trainer is None:
            return self._loader(self.train_stream)
        return self._loader(self.train_stream, self._train_start)

    def _train_start(self) -> tuple[int, int]:
        """(epoch, batches of it already trained) from the trainer; on a resume, also tells the stream how many
        raw records each worker already consumed, so it continues exactly (data/stream_position.py)."""
        epoch, done = resume_point(self.trainer, self.train_stream.batches_per_epoch)
        self.train_stream.resume_records = self.stream_position.skips(epoch, done, self._stream_settings(),
                                                                      self.num_workers)
        return epoch, done

    def _stream_settings(self) -> dict[str, Any]:
        """This recipe's settings that decide the train stream's records and order."""
        return stream_settings(self.train_sources, self.batch_size, self.samples_per_epoch, self.seed,
                               self.shuffle_buffer)

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
            self.stream_position.add(self.trainer.current_epoch, int(batch["worker"]), max(1, self.num_workers),
                                     batch["records_read"].tolist())
        return self._evaluated.mark_repeats(batch) if "padding" in batch else batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's train-stream position (a collective: Lightning calls it on all ranks)."""
        return self.stream_position.state_dict(self._stream_settings())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's stream position from a checkpoint."""
        self.stream_position.load_state_dict(state)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Normalise uint8 images to [-1, 1] on the device."""
        return normalize_images(batch)

    def sources(self, split: str) -> list[SourceConfig]:
        """A split's sources in batch `source` id order (`val`: the in-domain `val_sources`, then the
        `guard_sources`, read as one stream; `guard`: those alone)."""
        return {"train": self.train_sources, "val": self.val_sources + self.guard_sources,
                "test": self.test_sources, "guard": self.guard_sources}[split]

    def source_names(self, split: str = "train") -> list[str]:
        """Names of a split's sources in batch `source` id order."""
        return [s.name for s in self.sources(split)]

    def set_mixture_schedule(self, schedule: list[tuple[int, dict[str, float]]]) -> None:
        """Set (first global batch, {source name: weight}) phases; unnamed sources get weight 0."""
        names = self.source_names("train")
        unknown = {n for _, weights in schedule for n in weights} - set(names)
        if unknown:
            raise ValueError(f"mixture names unknown sources {sorted(unknown)}; sources are {names}")
        self.train_stream.set_schedule([(start, [w.get(n, 0.0) for n in names]) for start, w in schedule])
