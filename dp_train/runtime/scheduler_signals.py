"""The scheduler's SIGUSR1/SIGTERM: recorded by the training process, kept away from its helper processes.

A scheduler signals every process of a job step, not only the training processes: dataloader workers,
their fork server, multiprocessing's resource tracker and the wandb service get SIGUSR1/SIGTERM too, and by
default die of it (torch then stops the rank with "DataLoader worker exited unexpectedly"). dp_train starts
those helpers with both signals blocked (`scheduler_signals_blocked`); they inherit the mask, so only the
training process acts on the signals.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from typing import Any


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
