"""The DataLoader over the data streams and the processes of its workers: how they start and are set up."""

from __future__ import annotations

import functools
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext

import cv2
import torch
from torch.utils.data import DataLoader

from dp_train.data.stream import TrainStream, ValStream, sample_seed
from dp_train.runtime.scheduler_signals import scheduler_signals_blocked, take_scheduler_signals_in_worker

START_METHODS = ("auto", None, "fork", "spawn", "forkserver")
"""Accepted `worker_start_method` values."""
FORKSERVER_PRELOAD = ("dp_train.data.loader", "torch.utils.data._utils.worker")
"""Modules a fork server imports once, before forking any worker: each worker then starts in ~0.1 s instead
of importing the data pipeline itself (~5 s, at every epoch and validation). This module imports all that a
worker unpickles: the streams (with their transforms) and `init_worker`."""


def resolve_start_method(method: str | None, world_size: int) -> str | None:
    """The workers' start method, `method` with "auto" resolved for a run of `world_size` processes:
    "forkserver" in multi-process runs (a worker forked from a rank whose communication threads hold a lock
    can deadlock), the platform default otherwise (fork on Linux: workers start fastest)."""
    if method != "auto":
        return method
    return "forkserver" if world_size > 1 else None


def worker_context(method: str | None) -> BaseContext | None:
    """The multiprocessing context of dataloader workers (None: the platform default); a fork server
    preloads the data pipeline's modules."""
    if method is None:
        return None
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    return context


def init_worker(worker_id: int, owner: int) -> None:
    """Set up a dataloader worker: it ends with `owner` (the loading process, `end_with_owner`), runs OpenCV
    on one thread (a fresh process would start one per core; a forked worker already runs single-threaded,
    `stop_opencv_threads`, and is left alone), and its scheduler's signals are taken by a thread that lets
    only `owner` or the worker's parent stop it."""
    end_with_owner(owner)
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    take_scheduler_signals_in_worker(owner)


def end_with_owner(owner: int) -> None:
    """End this dataloader worker as soon as `owner`, the training process it loads for, ends, however it ends
    (at once if it already has): a thread waits for that and exits the process.

    Nothing else ends it when the owner is killed (SIGKILL, out of memory, a crash): torch's watchdog watches
    the worker's parent, which for a fork-server worker is the fork server, not the owner. The fork server
    stops once every holder of its "alive" pipe has closed it, and multiprocessing's resource tracker once
    every holder of its pipe has, but each worker holds both: the dead owner's workers, fork server and
    tracker waited for one another forever, orphaned, keeping the worker's memory and the job's output open
    (and deaf to the scheduler's SIGTERM, blocked in them). Once the workers end, the fork server and the
    tracker see their pipes close and end by themselves. Watching the owner itself rather than the parent
    (PR_SET_PDEATHSIG: the fork server, for a fork-server worker) covers every start method alike and needs
    no code in the fork server."""
    threading.Thread(target=_exit_after, args=(owner,), name="end-with-owner", daemon=True).start()


def _exit_after(owner: int) -> None:
    wait_for_exit(owner)
    os._exit(1)


def wait_for_exit(pid: int) -> None:
    """Return once process `pid` has ended (at once if it has already). On Linux (5.3 and later) the kernel
    wakes the caller through a pidfd the moment the process ends, whichever way (a zombie counts as ended;
    once opened, a pidfd is not fooled by a reused pid). Elsewhere (macOS) the process is polled each second:
    the wait ends up to a second late, and a zombie counts as alive until its parent reaps it."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd on this system
        _poll_until_gone(pid)
        return
    select.select([handle], [], [])
    os.close(handle)


def _poll_until_gone(pid: int) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(1.0)


def stop_opencv_threads() -> None:
    """Run OpenCV without its thread pool in the process that starts dataloader workers. A worker forked
    while a pool thread holds the pool's lock inherits the lock held and waits forever at its first OpenCV
    call (seen in CI: a forked worker stuck in `cv2.setNumThreads`). Only the loading process is affected:
    with workers, it does little image work."""
    cv2.setNumThreads(0)


class EpochLoader(DataLoader):
    """A DataLoader over a stream that tells the stream where it starts before workers are created.

    `position_fn` returns (epoch, batches of this epoch already trained): after
    a mid-epoch resume the stream continues at the right global batch index, so
    the curriculum's mixture schedule stays aligned with the optimizer steps.
    Without it, each iteration starts the next epoch from its first batch. `on_start` is called as each
    iteration begins (an evaluation pass starts its record of samples seen).

    Each iteration draws its workers' base seed from a generator of its own, seeded by (data seed,
    epoch, rank), not from torch's global RNG: the RNG state a checkpoint holds then does not depend
    on whether the next epoch's workers were started before it was saved (an uninterrupted run starts
    them after the epoch-end checkpoint, a resumed run before restoring the RNG), nor on validation.
    Workers (and their fork server) start with the scheduler's signals blocked: SLURM signals every
    process of the job, and only the training process may act on them.
    """

    def __init__(self, dataset, position_fn: Callable[[], tuple[int, int]] | None = None,
                 on_start: Callable[[], None] | None = None, **kwargs) -> None:
        super().__init__(dataset, batch_size=None, generator=torch.Generator(), **kwargs)
        self._position_fn = position_fn
        self._on_start = on_start
        self._next_epoch = 0

    def __iter__(self) -> Iterator:
        """Place the stream at its starting epoch and batch, seed the workers, and start them."""
        if self._on_start is not None:
            self._on_start()
        if self._position_fn is not None:
            self.dataset.epoch, self.dataset.start_batch = self._position_fn()
        else:
            self.dataset.epoch, self.dataset.start_batch = self._next_epoch, 0
            self._next_epoch += 1
        self.generator.manual_seed(sample_seed(self.dataset.seed, self.dataset.epoch, self.dataset.rank))
        if self.num_workers == 0:
            return super().__iter__()
        with scheduler_signals_blocked():
            return super().__iter__()


def epoch_loader(stream: TrainStream | ValStream, workers: int, start_method: str | None, pin_memory: bool,
                 position_fn: Callable[[], tuple[int, int]] | None = None,
                 on_start: Callable[[], None] | None = None) -> EpochLoader:
    """An EpochLoader over `stream` with `workers` processes started by `start_method` (None: the platform
    default), each set up by `init_worker`; OpenCV's threads in this process stop first (`stop_opencv_threads`)."""
    if workers > 0:
        stop_opencv_threads()
    return EpochLoader(
        stream,
        position_fn=position_fn,
        on_start=on_start,
        num_workers=workers,
        worker_init_fn=functools.partial(init_worker, owner=os.getpid()) if workers > 0 else None,
        multiprocessing_context=worker_context(start_method) if workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )
