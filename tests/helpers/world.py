"""A callback that writes what the trainer detected about the distributed world, one file per rank."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class RecordWorld(L.Callback):
    """Write {global_rank, local_rank, world_size, environment} to `out_dir/world_rank{R}.json` at fit start."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        environment = type(trainer.strategy.cluster_environment).__name__
        facts = {"global_rank": trainer.global_rank, "local_rank": trainer.local_rank,
                 "world_size": trainer.world_size, "environment": environment}
        (self.out_dir / f"world_rank{trainer.global_rank}.json").write_text(json.dumps(facts))
