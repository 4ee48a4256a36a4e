"""A callback that records, per optimizer step, what a resume must reproduce: the samples drawn, the learning
rates and the loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class RecordSteps(L.Callback):
    """Append one JSON line per training step to `path`: step, sample keys, learning rates, loss."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: dict,
                           batch_idx: int) -> None:
        line = {"step": trainer.global_step, "keys": list(batch["key"]),
                "lr": [group["lr"] for group in trainer.optimizers[0].param_groups],
                "loss": float(outputs["loss"])}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
