"""Per-rank state in a checkpoint written by rank 0: gathered from every rank, and handed back to each on resume
(data-stream positions, RNG states); RNG capture/restore for torch (CPU and CUDA), numpy and Python."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dp_train.runtime.checkpoint_io import CheckpointError


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
