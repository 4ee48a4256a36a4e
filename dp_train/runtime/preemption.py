"""Surviving SLURM: save at a step boundary on SIGUSR1/SIGTERM, requeue, and log to the same wandb run.

Lightning's SLURMEnvironment gives ranks (`SLURM_PROCID`/`SLURM_LOCALID`), world size
(`SLURM_NTASKS`) and the master address (from the node list); `srun` starts one
process per GPU. What Lightning does on signals is not enough for long runs: its
SIGUSR1 handler saves the checkpoint *inside* the signal handler (flaky: the signal
may land in the middle of a collective or of the optimizer step) and its SIGTERM
handling stops without saving. `PreemptionCheckpoint` replaces both with a flag that
is checked, on every rank together, at the next step boundary.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from dp_train.runtime.scheduler_signals import SIGNALS
from dp_train.runtime.slurm import requeue_job
from dp_train.runtime.wandb_run import close_wandb

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised on every rank once the preemption checkpoint is saved: leaves `fit` at once (stopping through
    `should_stop` would first run a validation pass and save again, in the few seconds SLURM leaves);
    the command line reports it and exits with status 0."""


class PreemptionCheckpoint(L.Callback):
    """On SIGUSR1 (`#SBATCH --signal=SIGUSR1@90`: the time limit is near) or SIGTERM (preemption, `scancel`),
    save `last.ckpt` at the next step boundary, requeue the job on SIGUSR1 (`scontrol requeue`), and stop
    (raising `Preempted`).

    The signal handler only records the signal (`SIGNALS`). After every training step the ranks agree (one
    all-reduce of a flag) whether any of them received one, so all save the same step and stop together; a
    requeued job started with `--ckpt_path last` continues from that checkpoint.

    Lightning's own handlers are kept out: its SIGTERM handler runs a collective inside the signal handler
    (it fails once another rank has exited) and its SIGUSR1 handler saves inside the signal handler. Ours is
    installed before Lightning installs its own (Lightning then leaves SIGUSR1 alone and restores ours when
    it tears down) and put back in front of Lightning's SIGTERM handler when the loops start.

    Args:
        requeue: run `scontrol requeue <job id>` after saving on SIGUSR1 (only inside a SLURM job).
    """

    def __init__(self, requeue: bool = True) -> None:
        self.requeue = requeue

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Take SIGUSR1/SIGTERM for `fit` when there is a checkpoint to save into, else give them back."""
        if stage != "fit":
            return
        if last_checkpoint_callback(trainer) is None:
            log.warning("no ModelCheckpoint with a dirpath: SIGUSR1/SIGTERM will stop training without saving")
            SIGNALS.uninstall()
            return
        SIGNALS.install()

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Replace the SIGTERM handler Lightning installed after `setup`."""
        SIGNALS.take_back()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Replace the SIGTERM handler Lightning installed after `setup` (when no sanity check ran)."""
        SIGNALS.take_back()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Save, requeue and stop when any rank received a signal during this step."""
        received = SIGNALS.received
        if not trainer.strategy.reduce_boolean_decision(received is not None, all=False):
            return
        checkpoint = last_checkpoint_callback(trainer)
        path = str(Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}")
        # Registered as the callback's last checkpoint (before saving: it is part of the saved state), or
        # ModelCheckpoint saves another one at train end, after closing the epoch, that `last` would resume.
        checkpoint.last_model_path = checkpoint._last_checkpoint_saved = path
        trainer.save_checkpoint(path)
        SIGNALS.close()
        name = received.name if received is not None else "a signal on another rank"
        log.warning("received %s: saved %s at step %d, stopping", name, path, trainer.global_step)
        if trainer.is_global_zero:
            close_wandb()  # before the requeue: it makes the scheduler send SIGTERM to every process
            if self.requeue and received == signal.SIGUSR1:
                requeue_job()
        raise Preempted(f"stopped by {name} after saving {path} at step {trainer.global_step}")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """After a `fit` that ended normally, give the signals back to whoever handled them before. (A
        preempted fit never gets here: its process keeps ignoring them until it exits.)"""
        if stage == "fit":
            SIGNALS.uninstall()


def last_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The ModelCheckpoint that keeps `last.ckpt` (the first with `save_last`, else the first with a dirpath)."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    return next((c for c in callbacks if c.save_last), callbacks[0] if callbacks else None)
