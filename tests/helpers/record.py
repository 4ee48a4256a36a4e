"""Callbacks that record what a run did, for tests to compare: the sample keys each rank trains on, and per
optimizer step what a resume must reproduce (samples drawn, learning rates, loss)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class RecordKeys(L.Callback):
    """Append every training batch's sample keys to `out_dir/keys_rank{R}.txt`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: dict, batch_idx: int) -> None:
        with open(self.out_dir / f"keys_rank{trainer.global_rank}.txt", "a") as fh:
            fh.writelines(f"{key}\n" for key in batch["key"])


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
