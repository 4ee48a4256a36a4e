"""Checkpoint files that survive a kill and are refused clearly when they cannot be used.

Lightning writes checkpoints from rank 0 only and non-atomically. `AtomicCheckpointIO` writes to a temporary
file and renames it, so a kill while saving never leaves a truncated `last.ckpt`; a corrupt, truncated or
foreign file, or a full disk, is one `CheckpointError` line naming the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dp_train.runtime.sharded import is_sharded_checkpoint, read_sharded_meta


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not belong to this run."""


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
