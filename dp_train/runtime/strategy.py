"""Lightning's FSDP2 strategy with atomic sharded checkpoints, read without running pickled code
(dp_train.runtime.sharded)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from dp_train.runtime.checkpoint_io import CheckpointError
from dp_train.runtime.sharded import is_sharded_checkpoint, restore_sharded


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
        running pickled code (dp_train.runtime.sharded), and one that cannot be read is one CheckpointError naming it."""
        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=True)
        try:
            return restore_sharded(path, self.model, self.optimizers, strict=self.lightning_module.strict_loading)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
