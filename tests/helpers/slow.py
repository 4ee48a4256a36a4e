"""A callback that slows training steps down, so a test can signal a run in the middle of it."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class SlowSteps(L.Callback):
    """Sleep `seconds` after every training step; touch `out_dir/step{N}` as steps complete."""

    def __init__(self, seconds: float, out_dir: str) -> None:
        self.seconds, self.out_dir = seconds, Path(out_dir)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.is_global_zero:
            (self.out_dir / f"step{trainer.global_step}").touch()
        time.sleep(self.seconds)
