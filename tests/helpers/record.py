"""A callback that writes the sample keys each rank trains on, one file per rank."""

from __future__ import annotations

from pathlib import Path

import lightning as L


class RecordKeys(L.Callback):
    """Append every training batch's sample keys to `out_dir/keys_rank{R}.txt`."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: dict, batch_idx: int) -> None:
        with open(self.out_dir / f"keys_rank{trainer.global_rank}.txt", "a") as fh:
            fh.writelines(f"{key}\n" for key in batch["key"])
