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
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """The job id as `scontrol requeue` wants it (`ARRAYJOB_TASK` for array jobs), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def use_stable_wandb_run() -> None:
    """Inside a SLURM job, make wandb resume one run per job id, so a requeued job logs where it left off.

    Sets `WANDB_RUN_ID=slurm-<job id>` and `WANDB_RESUME=allow` unless already set (a sweep agent sets its own).
    """
    job = slurm_job_id()
    if job and "WANDB_RUN_ID" not in os.environ and SLURMEnvironment.detect():  # not in salloc/interactive shells
        os.environ["WANDB_RUN_ID"] = f"slurm-{job}"
        os.environ.setdefault("WANDB_RESUME", "allow")


class Preempted(Exception):
    """Raised on every rank once the preemption checkpoint is saved: leaves `fit` at once (stopping through
    `should_stop` would first run a validation pass and save again, in the few seconds SLURM leaves);
    the command line reports it and exits with status 0."""


class PreemptionCheckpoint(L.Callback):
    """On SIGUSR1 (`#SBATCH --signal=SIGUSR1@90`: the time limit is near) or SIGTERM (preemption, `scancel`),
    save `last.ckpt` at the next step boundary, requeue the job on SIGUSR1 (`scontrol requeue`), and stop
    (raising `Preempted`).

    The handler only records the signal. After every training step the ranks agree (one all-reduce of a
    flag) whether any of them received one, so all save the same step and stop together; a requeued job
    started with `--ckpt_path last` continues from that checkpoint.

    Args:
        requeue: run `scontrol requeue <job id>` after saving on SIGUSR1 (only inside a SLURM job).
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, requeue: bool = True) -> None:
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the flag-setting handlers (after Lightning's own, which they replace for training)."""
        if last_checkpoint_callback(trainer) is None:
            log.warning("no ModelCheckpoint with a dirpath: SIGUSR1/SIGTERM will stop training without saving")
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """Save, requeue and stop when any rank received a signal during this step."""
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        checkpoint = last_checkpoint_callback(trainer)
        path = str(Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}")
        # Registered as the callback's last checkpoint (before saving: it is part of the saved state), or
        # ModelCheckpoint saves another one at train end, after closing the epoch, that `last` would resume.
        checkpoint.last_model_path = checkpoint._last_checkpoint_saved = path
        trainer.save_checkpoint(path)
        name = self.received.name if self.received is not None else "a signal on another rank"
        log.warning("received %s: saved %s at step %d, stopping", name, path, trainer.global_step)
        if trainer.is_global_zero and self.requeue and self.received == signal.SIGUSR1:
            requeue_job()
        self._restore_handlers()
        raise Preempted(f"stopped by {name} after saving {path} at step {trainer.global_step}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Give the signals back to whoever handled them before training."""
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def last_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The ModelCheckpoint that keeps `last.ckpt` (the first with `save_last`, else the first with a dirpath)."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    return next((c for c in callbacks if c.save_last), callbacks[0] if callbacks else None)


def requeue_job() -> None:
    """`scontrol requeue` this SLURM job (the job must be requeueable: `#SBATCH --requeue`)."""
    job = slurm_job_id()
    if job is None:
        log.warning("not inside a SLURM job: nothing to requeue")
        return
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("could not requeue SLURM job %s: %s", job, err)
        return
    if done.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job, done.stderr.strip())
    else:
        log.warning("requeued SLURM job %s", job)
