"""What a run needs, beyond Lightning's own checkpoint contents, to continue exactly after a kill.

Lightning checkpoints the weights, optimizer, schedulers and callback states, but
writes them from rank 0 only and non-atomically. This module adds:

- `gather_per_rank`: per-rank state (data-stream positions, RNG states) collected
  from every rank into the checkpoint, so each rank finds its own on resume;
- `TrainPosition`: raw records each dataloader worker consumed per source in the
  current epoch — with the deterministic per-batch mixture draws this is the
  complete position of the training stream, bad records included;
- `setting_changes`: the settings a run changed since its checkpoint, for the one-line warning
  when a position cannot be continued exactly;
- RNG capture/restore for torch (CPU and CUDA), numpy and Python;
- `AtomicCheckpointIO`: checkpoints written to a temporary file and renamed, so a
  kill while saving never leaves a truncated `last.ckpt`, and a corrupt or
  truncated checkpoint is refused with one line naming the file;
- `AtomicModelParallelStrategy`: Lightning's FSDP2 strategy with the same guarantee
  for its sharded checkpoint directories (written beside, then swapped in), which
  it reads without running pickled code (dp_train.sharded).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from dp_train.sharded import is_sharded_checkpoint, read_sharded_meta, restore_sharded


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not belong to this run."""


def gather_per_rank(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (a one-item list without torch.distributed).

    A collective: every rank must call it (Lightning builds checkpoints on all ranks).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def own_entry(entries: list[Any], what: str) -> Any:
    """This rank's item of a `gather_per_rank` list; refuses a checkpoint from another world size."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    if len(entries) != world:
        raise CheckpointError(
            f"the checkpoint's {what} comes from {len(entries)} rank(s), this run has {world}: "
            "resume with the same number of processes (or start a new run initialised from the weights)"
        )
    return entries[rank]


def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states (tensors and plain types only, so the
    checkpoint still loads with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O, made safe against kills and clear about corrupt files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        """Write `path` via a temporary file in the same folder and an atomic rename; a write that fails (a full
        disk) removes the temporary file, leaves the previous checkpoint as it was and is one CheckpointError."""
        if "://" in str(path):  # remote storage: fsspec writes the object in one request
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            failure = unwritable_checkpoint(path, err)
            if failure is None:
                raise
            raise failure from None
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict:
        """Read a checkpoint with `weights_only=True` whatever the caller or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD say (no
        pickled code runs); a missing, truncated or corrupt file raises one CheckpointError naming it."""
        kwargs["weights_only"] = True
        if not get_filesystem(path).exists(path):
            raise CheckpointError(f"{path}: checkpoint not found")
        if is_sharded_checkpoint(path):
            raise CheckpointError(f"{path}: a sharded (FSDP) checkpoint directory: resume it with the strategy that "
                                  "wrote it (ModelParallelStrategy), or start a new run from it with --weights")
        try:
            return super().load_checkpoint(path, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any unpickling/zip failure means an unusable file
            raise unreadable_checkpoint(path, err) from None


def unreadable_checkpoint(path: str | Path, err: Exception) -> CheckpointError:
    """The one-line error for a checkpoint file that cannot be read. torch's reader failing (RuntimeError,
    EOFError, OSError) means a truncated or corrupt file, told with its first line; the unpickler refusing or
    choking (UnpicklingError, or IndexError/KeyError on text) means no torch file, or one holding more than tensors
    and plain data (torch's own message would suggest `weights_only=False`, which runs such a file's code)."""
    if not isinstance(err, (RuntimeError, EOFError, OSError)):
        return CheckpointError(f"{path}: not a torch checkpoint file (or it holds more than tensors and plain data)")
    first_line = str(err).splitlines()[0] if str(err) else ""
    return CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {type(err).__name__}: "
                           f"{first_line}")


def unwritable_checkpoint(path: Path, err: Exception) -> CheckpointError | None:
    """The one-line CheckpointError for a checkpoint that could not be written, from the OSError behind `err`
    (torch's zip writer reports a failed write as `[enforce fail at inline_container.cc] unexpected pos`, with
    the OSError only as its context); None when no OSError lies behind it."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    return CheckpointError(f"cannot save checkpoint {path}: {cause.strerror or cause}; checkpoints saved before are "
                           "kept (resume with --ckpt_path last once the cause is fixed)")


def checkpoint_hparams(path: str | Path) -> dict:
    """The `hyper_parameters` of a Lightning checkpoint, read memory-mapped (the tensors are not read).

    Raises CheckpointError (one line, naming the file) for an unreadable file and for network weights
    without training state (Apple's `depth_pro.pt`, an export), which belong in `--weights`. A sharded
    checkpoint directory's are read from its `meta.pt`, after checking its `.metadata` is genuine."""
    if is_sharded_checkpoint(path):
        try:
            return dict(read_sharded_meta(path).get("hyper_parameters") or {})
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    try:
        checkpoint = _load_mapped(path)
    except Exception as err:  # noqa: BLE001 - any reader failure means an unusable file
        raise unreadable_checkpoint(path, err) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: network weights, not a training checkpoint: pass them as --weights")
    return dict(checkpoint.get("hyper_parameters") or {})


def _load_mapped(path: str | Path) -> object:
    """torch.load, memory-mapped where the file's format allows it (torch's zip format; legacy files are read)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` (FSDP2) whose sharded checkpoint directories are replaced whole.

    Every rank writes its shard into `.NAME.partial/` beside the target; after a barrier rank 0
    moves the previous directory aside, renames the new one into place and deletes the old one.
    A kill during the (long) writing leaves the previous checkpoint untouched; only a kill between
    the two renames (microseconds) leaves it as `.NAME.old`, complete, for a manual rename.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any = None) -> None:
        """Write the checkpoint; sharded directories atomically as described above."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        partial, old = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.old")
        if self.global_rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        self.barrier()
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier()
        if self.global_rank == 0:
            shutil.rmtree(old, ignore_errors=True)
            if path.exists():
                os.replace(path, old)
            os.replace(partial, path)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loading for a checkpoint file (with `weights_only=True`); a sharded directory is read without
        running pickled code (dp_train.sharded), and one that cannot be read is one CheckpointError naming it."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=True)
        try:
            return restore_sharded(path, self.model, self.optimizers, strict=self.lightning_module.strict_loading)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
