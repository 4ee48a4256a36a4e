"""A datamodule as a resumed run's trainer leaves it (in some epoch, some batches done, maybe a checkpoint's
data-stream state loaded), without a trainer or a child process: for tests of where a resumed stream goes on."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dp_train.data.datamodule import DepthDataModule
from dp_train.data.sources import SourceConfig
from tests.helpers.kill_and_resume import EPOCH


def resumed_datamodule(shards: Path, epoch: int, done: int, checkpoint: dict | None = None, closed: bool = False,
                       **settings: Any) -> DepthDataModule:
    """A datamodule of a run resumed from `checkpoint` (its datamodule state), whose trainer is in `epoch` with
    `done` of its batches trained and the epoch `closed` or not (what Lightning reports when it creates the train
    iterator)."""
    dm = DepthDataModule(**({
        "train_sources": [SourceConfig("a", str(shards))], "image_size": 64, "batch_size": 1,
        "samples_per_epoch": EPOCH, "num_workers": 0, "pin_memory": False, "shuffle_buffer": 4} | settings))
    batches = SimpleNamespace(current=SimpleNamespace(ready=done))
    epochs = SimpleNamespace(current=SimpleNamespace(processed=epoch + closed, completed=epoch))
    dm.trainer = SimpleNamespace(current_epoch=epoch, global_rank=0, world_size=1, fit_loop=SimpleNamespace(
        epoch_progress=epochs, epoch_loop=SimpleNamespace(batch_progress=batches)))
    if checkpoint is not None:
        dm.load_state_dict(checkpoint)
    dm.setup("fit")
    return dm


def mid_epoch_checkpoint(shards: Path, **settings: Any) -> dict:
    """The datamodule state of a run with `settings` that trained two records of epoch 0."""
    state = resumed_datamodule(shards, epoch=0, done=0, **settings).state_dict()
    state["train_position"][0] |= {"workers": max(1, settings.get("num_workers", 0)), "records": {0: [2]}}
    return state
