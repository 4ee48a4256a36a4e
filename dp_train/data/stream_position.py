"""Where the training stream stands: kept in checkpoints, so that a run resumed mid-epoch continues the stream
exactly, and says in one line when it cannot (a setting that decides the stream changed since the checkpoint)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from dp_train.data.sources import SourceConfig
from dp_train.runtime.per_rank import gather_per_rank, own_entry

log = logging.getLogger(__name__)


@dataclass
class TrainPosition:
    """Raw records consumed per dataloader worker and source in one epoch of this rank's train stream."""

    epoch: int = 0
    workers: int = 0
    """Dataloader workers of the stream (0: nothing recorded yet)."""
    records: dict[int, list[int]] = field(default_factory=dict)

    def add(self, epoch: int, worker: int, workers: int, records_read: list[int]) -> None:
        """Account one trained batch produced by `worker` of `workers` (a new epoch starts from zero)."""
        if epoch != self.epoch:
            self.epoch, self.records = epoch, {}
        self.workers = workers
        counts = self.records.setdefault(worker, [0] * len(records_read))
        self.records[worker] = [a + b for a, b in zip(counts, records_read)]

    def skips_for(self, epoch: int) -> dict[int, list[int]]:
        """Records each worker passes over when the stream restarts in `epoch` (none in another epoch)."""
        return {w: list(c) for w, c in self.records.items()} if epoch == self.epoch else {}


def setting_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key value (checkpoint: value)` for each setting a checkpoint recorded that this run changed (lists of
    named entries, e.g. data sources, by the names added, removed or changed; other lists and dicts by key)."""
    changes = []
    for key, value in current.items():
        if key in recorded and recorded[key] != value:
            if isinstance(value, list) and isinstance(recorded[key], list):
                changes.append(f"{key} {named_changes(recorded[key], value)}")
            elif isinstance(value, dict):
                changes.append(f"other {key}")
            else:
                changes.append(f"{key} {value} (checkpoint: {recorded[key]})")
    return changes


def named_changes(recorded: list[Any], current: list[Any]) -> str:
    """How two lists of `{"name": ...}` entries differ: `added 'b', removed 'c', changed 'a'` (`changed` when
    the entries are not all named and unique, `reordered` when only their order differs)."""
    before, after = ({entry.get("name"): entry for entry in entries if isinstance(entry, dict)}
                     for entries in (recorded, current))
    if len(before) != len(recorded) or len(after) != len(current):
        return "changed"
    parts = [f"{what} {', '.join(sorted(map(repr, names)))}" for what, names in (
        ("added", after.keys() - before.keys()), ("removed", before.keys() - after.keys()),
        ("changed", {name for name in before.keys() & after.keys() if before[name] != after[name]})) if names]
    return ", ".join(parts) or "reordered"


def stream_settings(sources: list[SourceConfig], batch_size: int, samples_per_epoch: int, seed: int,
                    shuffle_buffer: int) -> dict[str, Any]:
    """The settings (by recipe key) that decide which raw records the train stream reads in which order (the
    position a checkpoint holds is only meaningful under the same ones). Shards count by file name: a job that
    copies them to another folder (node-local scratch) still continues exactly."""
    entries = [dataclasses.asdict(source) | {"urls": [Path(url).name for url in source.shard_urls()]}
               for source in sources]
    return {"data.batch_size": batch_size, "data.samples_per_epoch": samples_per_epoch,
            "data.seed": seed, "data.shuffle_buffer": shuffle_buffer, "data.train_sources": entries}


def resume_point(trainer: L.Trainer, batches_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches of it already trained) where the train iterator Lightning creates now must start.

    Lightning creates the iterator of a resumed run before it settles its own counters. A
    checkpoint saved after an epoch's last batch (a step checkpoint, a preemption save) still
    reports the finished epoch here, but Lightning then moves on to the next epoch and takes its
    batches from this iterator: it must start that epoch (continuing "after the last batch" would
    yield nothing, and Lightning would count the empty pass as one more epoch, skipping a whole
    epoch of data). A checkpoint saved once the epoch was closed (`on_train_epoch_end`) reports
    it too, but there Lightning first finishes that epoch with this iterator, then starts a new
    one: it must be empty."""
    epoch, done = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready
    epochs = trainer.fit_loop.epoch_progress.current  # processed > completed: closed, not yet counted
    if done >= batches_per_epoch and epochs.processed == epochs.completed:
        return epoch + 1, 0
    return epoch, done


class StreamPosition:
    """This rank's train-stream position (raw records each dataloader worker consumed per source in the
    epoch) and the stream settings of the checkpoint it was restored from (empty: not resumed, or a
    checkpoint without them)."""

    def __init__(self) -> None:
        self.position = TrainPosition()
        self.resumed_settings: dict[str, Any] = {}

    def add(self, epoch: int, worker: int, workers: int, records_read: list[int]) -> None:
        """Account one trained batch produced by `worker` of `workers`."""
        self.position.add(epoch, worker, workers, records_read)

    def skips(self, epoch: int, done: int, settings: dict[str, Any], workers: int) -> dict[int, list[int]]:
        """Raw records each worker passes over when the stream restarts in `epoch` after `done` batches (none at
        an epoch start). Under other `settings` or `workers` than the checkpoint's, the position is dropped and one
        warning names the changes: the rest of the epoch is drawn anew."""
        if not done:
            return {}
        changes = self.changes(settings, workers)
        if changes:
            log.warning("resuming mid-epoch with %s: the rest of epoch %d is drawn anew, not continued exactly "
                        "(some of its samples may repeat)", "; ".join(changes), epoch)
            self.position = TrainPosition()
        return self.position.skips_for(epoch)

    def changes(self, settings: dict[str, Any], workers: int) -> list[str]:
        """How this run's stream `settings` and dataloader `workers` differ from the checkpoint's (empty: the
        stream continues exactly). A source added or removed since the checkpoint is such a change, not an
        error: the weights, optimizer and schedules are those of the checkpoint whatever the data, so a run may
        go on with more (or fewer) sets; only the position inside the epoch cannot be kept."""
        recorded = self.position.workers
        changes = setting_changes(self.resumed_settings, settings)
        if recorded not in (0, max(1, workers)):
            changes.insert(0, f"data.num_workers {workers} (checkpoint: {recorded})")
        count = len(settings["data.train_sources"])
        sources = {len(counts) for counts in self.position.records.values()} - {count}
        if sources and "data.train_sources" not in self.resumed_settings:  # a checkpoint without the settings
            changes.append(f"{count} data.train_sources (checkpoint: {sources.pop()})")
        return changes

    def state_dict(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Every rank's position and this run's stream `settings` (a collective: call it on all ranks)."""
        return {"train_position": gather_per_rank(dataclasses.asdict(self.position)), "train_settings": settings}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's position and the stream settings from a checkpoint's `state_dict`."""
        if "train_position" in state:
            entry = own_entry(state["train_position"], "data-stream position")
            records = {int(worker): list(counts) for worker, counts in entry["records"].items()}
            self.position = TrainPosition(entry["epoch"], entry["workers"], records)
        self.resumed_settings = state.get("train_settings", {})
