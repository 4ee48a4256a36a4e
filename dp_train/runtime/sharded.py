"""Reading sharded (torch.distributed.checkpoint, FSDP) checkpoint directories without running pickled code.

torch's reader unpickles a directory's `.metadata` with plain `pickle`, and its planners read the shards'
non-tensor entries with `torch.load(weights_only=False)`: a crafted directory passed as weights or as a
checkpoint would run its payload. Here

- `.metadata` is read by `MetadataUnpickler`, which admits only the checkpoint-metadata types;
- a non-tensor entry must load with `weights_only=True` before the planner reads it;
- Lightning's `meta.pt` (the training state beside the shards) is read with `weights_only=True`;

and every failure, torch's `CheckpointException` (a BaseException) included, is one ValueError naming the
directory. Tensors are read by torch with `weights_only=True` already.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.distributed.checkpoint as dcp
from lightning.fabric.utilities.load import _METADATA_FILENAME
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

T = TypeVar("T")

META_FILE = _METADATA_FILENAME
"""Lightning's file of everything but weights and optimizer states in a sharded checkpoint (`meta.pt`)."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a genuine `.metadata` pickle refers to: the metadata classes (dataclasses and one enum), torch's
    Size, dtypes and layout lookup, and the paths torch records as checkpoint ids. None of them runs code when
    constructed from pickled data."""
    types = [obj for obj in vars(dcp_metadata).values()
             if isinstance(obj, type) and obj.__module__ == dcp_metadata.__name__]
    types += [_StorageInfo, torch.Size, collections.OrderedDict,
              pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]
    allowed: dict[tuple[str, str], Any] = {(t.__module__, t.__qualname__): t for t in types}
    allowed |= {("torch", name): obj for name, obj in vars(torch).items() if isinstance(obj, torch.dtype)}
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    return allowed


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles a `.metadata` file, refusing any global outside the checkpoint-metadata types."""

    ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global `module.name`; anything else is an UnpicklingError naming it."""
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata type") from None


class SafeFileSystemReader(FileSystemReader):
    """torch's file-system checkpoint reader with `.metadata` read by `MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        """The checkpoint's metadata (what torch's reader returns, without running pickled code)."""
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as stream:
            metadata = MetadataUnpickler(stream).load()
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise pickle.UnpicklingError(f".metadata holds a {type(metadata).__name__}, not checkpoint metadata")
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyBytes:
    """Planner mixin: a non-tensor entry of the shards must load with `weights_only=True` (plain data and
    tensors) before torch's planner unpickles it with `weights_only=False`, from the same bytes in memory."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        """Check the entry, then let the planner store it."""
        _load_plain(value, f"entry {read_item.dest_index.fqn}")
        value.seek(0)
        super().load_bytes(read_item, value)


class SafeLoadPlanner(_WeightsOnlyBytes, DefaultLoadPlanner):
    """torch's default load planner (fills a given state dict) with checked non-tensor entries."""


class _SafeGatheringPlanner(_WeightsOnlyBytes, _EmptyStateDictLoadPlanner):
    """torch's planner that rebuilds the whole saved state dict, with checked non-tensor entries."""


def load_sharded(state: dict[str, Any], path: str | Path) -> None:
    """Fill `state` (e.g. a sharded model's state dict, on every rank) from the checkpoint directory `path`."""
    _guarded(path, lambda: dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner()))


def read_sharded_checkpoint(path: str | Path) -> dict[str, Any]:
    """The full state of a checkpoint directory gathered into this process, with Lightning's `meta.pt` entries
    (what Lightning's `consolidate_checkpoint` tool produces)."""
    meta = read_sharded_meta(path)
    checkpoint: dict[str, Any] = {}
    _guarded(path, lambda: _load_state_dict(checkpoint, storage_reader=SafeFileSystemReader(path),
                                            planner=_SafeGatheringPlanner(), no_dist=True))
    return checkpoint | meta


def read_sharded_meta(path: str | Path) -> dict[str, Any]:
    """Lightning's `meta.pt` of a checkpoint directory (hyper-parameters, loops, callbacks; empty if absent),
    after checking that its `.metadata` is genuine: refusing a crafted directory before any other work."""
    path = Path(path)
    _guarded(path, lambda: SafeFileSystemReader(path).read_metadata())
    meta = path / META_FILE
    return _guarded(path, lambda: dict(_load_plain(meta, META_FILE))) if meta.is_file() else {}


def _load_plain(source: Any, what: str) -> Any:
    """torch.load with `weights_only=True`; a pickled object beyond tensors and plain data is refused in our words
    (torch's own message suggests `weights_only=False`, which would run it)."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise pickle.UnpicklingError(f"{what} holds more than tensors and plain data") from None


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a checkpoint directory (one with a `.metadata` file, as torch and Lightning decide)."""
    return Path(path).is_dir() and (Path(path) / ".metadata").is_file()


def _guarded(path: str | Path, read: Callable[[], T]) -> T:
    """Run `read`; any failure, torch's CheckpointException included, is one ValueError naming `path`."""
    try:
        return read()
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - any reader failure means an unusable directory
        raise ValueError(f"cannot read sharded checkpoint {path}: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    """The type and first line of the failure (the first rank's, for torch's CheckpointException)."""
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def restore_sharded(path: str | Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                    strict: bool = True) -> dict[str, Any]:
    """Load a sharded training checkpoint into an FSDP2 model and its optimizers (on every rank, as Lightning's
    ModelParallelStrategy does, under the names it saves: `state_dict`, `optimizer_<i>`); returns the rest of the
    checkpoint (`meta.pt`)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    meta = read_sharded_meta(path)
    model_state = {"state_dict": get_model_state_dict(model)}
    load_sharded(model_state, path)
    model.load_state_dict(model_state["state_dict"], strict=strict)
    for index, optimizer in enumerate(optimizers):
        key = f"optimizer_{index}"
        optimizer_state = {key: get_optimizer_state_dict(model, optimizer)}
        load_sharded(optimizer_state, path)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optimizer_state[key],
                                 options=StateDictOptions(cpu_offload=True))
    return meta
