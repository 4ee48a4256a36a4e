"""A callback that holds a training run in a chosen phase until a scheduler signal arrives, so that a test
(or SLURM's own timer) signals it exactly there."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L

from dp_train.runtime.scheduler_signals import SIGNALS


class PauseIn(L.Callback):
    """From optimizer step `after_step` on, wait in `phase` until this process has received SIGUSR1/SIGTERM
    (at most `seconds`), after touching `out_dir/paused_in_<phase>` (rank 0). Phases: "step" (between
    backward and the optimizer step: mid-step) and "validation" (after a validation batch). Only in a job's
    first run: a requeued SLURM job (SLURM_RESTART_COUNT > 0) runs at full speed."""

    def __init__(self, phase: str, out_dir: str, seconds: float = 300.0, after_step: int = 0) -> None:
        self.phase, self.out_dir, self.seconds, self.after_step = phase, Path(out_dir), seconds, after_step
        self.active = int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0

    def _pause(self, trainer: L.Trainer, phase: str) -> None:
        if not (self.active and phase == self.phase and trainer.global_step >= self.after_step):
            return
        if trainer.is_global_zero:
            (self.out_dir / f"paused_in_{phase}").touch()
        deadline = time.monotonic() + self.seconds
        while SIGNALS.received is None and not SIGNALS.closed and time.monotonic() < deadline:
            time.sleep(0.1)

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: Any) -> None:
        self._pause(trainer, "step")

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._pause(trainer, "validation")
