"""Surviving SLURM: save at a step boundary on SIGUSR1/SIGTERM, requeue, and log to the same wandb run.

Lightning's SLURMEnvironment gives ranks (`SLURM_PROCID`/`SLURM_LOCALID`), world size
(`SLURM_NTASKS`) and the master address (from the node list); `srun` starts one
process per GPU. What Lightning does on signals is not enough for long runs: its
SIGUSR1 handler saves the checkpoint *inside* the signal handler (flaky: the signal
may land in the middle of a collective or of the optimizer step) and its SIGTERM
handling stops without saving. `PreemptionCheckpoint` replaces both with a flag that
is checked, on every rank together, at the next step boundary.

A scheduler signals every process of a job step, not only the training processes: dataloader workers,
their fork server, multiprocessing's resource tracker and the wandb service get SIGUSR1/SIGTERM too, and by
default die of it (torch then stops the rank with "DataLoader worker exited unexpectedly"). dp_train starts
those helpers with both signals blocked (`scheduler_signals_blocked`); they inherit the mask, so only the
training process acts on the signals.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)

SCHEDULER_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
"""What SLURM sends before a time limit (`--signal=SIGUSR1@N`) and on preemption, `scancel` or requeue."""


@contextmanager
def scheduler_signals_blocked() -> Iterator[None]:
    """Block SIGUSR1/SIGTERM in this thread while helper processes are started inside the block: a child
    inherits the signal mask (across fork and exec), so the scheduler's signals stay pending in it for good
    instead of killing it. Signals that reach this process meanwhile are delivered when the block ends.
    Multiprocessing's resource tracker is started here too, so that it inherits the mask."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SCHEDULER_SIGNALS)
    try:
        resource_tracker.ensure_running()  # unblocks SIGINT/SIGTERM when it starts the tracker: block again
        signal.pthread_sigmask(signal.SIG_BLOCK, SCHEDULER_SIGNALS)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def take_scheduler_signals_in_worker(owner: int) -> None:
    """In a dataloader worker (started with SIGUSR1/SIGTERM blocked): a thread takes those signals one by one
    and ends the worker on a SIGTERM from the process that owns it (`owner`, the loading process, or the
    fork server that forked it), which is how torch and multiprocessing stop a worker they no longer need;
    any other sender's signal (the scheduler's, sent to every process of the job) is dropped. Without it a
    worker left running at exit could not be stopped, and the exiting process would wait for it forever."""
    threading.Thread(target=_serve_scheduler_signals, args=(owner,), name="scheduler-signals", daemon=True).start()


def _serve_scheduler_signals(owner: int) -> None:
    while True:
        info = signal.sigwaitinfo(SCHEDULER_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid in (owner, os.getppid()):
            os._exit(0)


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


class SignalRecord:
    """The scheduler signal (SIGUSR1/SIGTERM) this process received, kept by a handler that does nothing
    else; `PreemptionCheckpoint` acts on it at the next step boundary.

    `fit` installs it first thing (`SIGNALS.install()` in the command line), before the network, the data
    and a checkpoint are loaded, which can take minutes: a signal that arrives meanwhile is acted on at the
    first step instead of killing the process. Once closed (the preemption checkpoint is saved), later
    signals are ignored: a requeue makes the scheduler cancel the job at once (SIGTERM to every process),
    which must not interrupt the clean exit.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.closed = False
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> None:
        """Take SIGUSR1/SIGTERM from whoever handles them now (kept to hand them back in `uninstall`)."""
        if not self.installed:
            self.received, self.closed = None, False
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SCHEDULER_SIGNALS}

    def take_back(self) -> None:
        """Handle the signals again after someone else (Lightning) installed handlers over ours."""
        if self.installed:
            for signum in SCHEDULER_SIGNALS:
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.closed:
            self.received = signal.Signals(signum)

    def close(self) -> None:
        """Ignore every signal from now on (the process is on its way out)."""
        self.closed = True

    def uninstall(self) -> None:
        """After training: SIGTERM goes back to its previous handler (a SIGTERM received meanwhile is delivered
        to it again); SIGUSR1, "save, the time limit is near", is ignored from now on: there is nothing left
        to save, and by default it would kill a process that is finishing a completed run."""
        previous, self._previous = self._previous, {}
        if not previous:
            return
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        received, self.received = self.received, None
        if received == signal.SIGTERM and not self.closed:
            signal.raise_signal(received)


SIGNALS = SignalRecord()
"""This process's record of the scheduler's signals."""


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
