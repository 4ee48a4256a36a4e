"""The wandb run of a job: one run per SLURM job id (a requeued job logs where it left off), its service started
out of the scheduler's reach, and closed before a requeue."""

from __future__ import annotations

import logging
import os
import threading

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment

from dp_train.runtime.scheduler_signals import scheduler_signals_blocked
from dp_train.runtime.slurm import slurm_job_id

log = logging.getLogger(__name__)


def start_wandb_service(trainer: L.Trainer) -> None:
    """Start the wandb service of rank 0 (which `wandb.init` would start later) with the scheduler's signals
    blocked, so that it outlives a SIGUSR1/SIGTERM and the run's last logs are not lost. A no-op without a
    WandbLogger, on other ranks and with WANDB_MODE=disabled."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if trainer.is_global_zero and loggers:
        import wandb

        if any(logger._offline for logger in loggers):  # what WandbLogger sets later, read by wandb at setup
            os.environ["WANDB_MODE"] = "dryrun"
        with scheduler_signals_blocked():
            wandb.setup()


def close_wandb(timeout: float = 30.0) -> None:
    """Finish the wandb run and stop its service before the job is requeued or ends.

    The service (a Go program) handles SIGTERM itself, so no signal mask keeps it alive: the SIGTERM that a
    requeue, `scancel` or a preemption sends to every process ends it, and wandb's exit hook in this
    process would then fail with a ConnectionResetError traceback. Closing first flushes the run's last
    logs (on SIGUSR1 the service is still alive here) and removes that hook; a service already gone is one
    warning line. Waits at most `timeout` seconds, so slow uploads never delay the requeue."""
    import wandb

    if wandb.run is None:
        return
    closing = threading.Thread(target=_teardown_wandb, name="close-wandb", daemon=True)
    closing.start()
    closing.join(timeout)
    if closing.is_alive():
        log.warning("wandb did not finish within %.0f s: what it had not sent yet is lost", timeout)


def _teardown_wandb() -> None:
    import wandb

    try:
        wandb.teardown()
    except (OSError, AssertionError) as err:  # ConnectionResetError: the service received SIGTERM first
        log.warning("wandb's service had already stopped (%s): the run's last logs may be missing", err)


def use_stable_wandb_run() -> None:
    """Inside a SLURM job, make wandb resume one run per job id, so a requeued job logs where it left off.

    Sets `WANDB_RUN_ID=slurm-<job id>` and `WANDB_RESUME=allow` unless already set (a sweep agent sets its own).
    """
    job = slurm_job_id()
    if job and "WANDB_RUN_ID" not in os.environ and SLURMEnvironment.detect():  # not in salloc/interactive shells
        os.environ["WANDB_RUN_ID"] = f"slurm-{job}"
        os.environ.setdefault("WANDB_RESUME", "allow")
