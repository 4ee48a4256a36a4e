"""Background threads joined to the network's loop by bounded queues: reading ahead (`ReadAhead`) and writing
behind (`WriteBehind`), so the network waits neither for decoding nor for encoding files. Threads, not processes:
decoding (Pillow, FFmpeg), resizing (torch) and encoding (zlib) release the GIL, and a thread shares the loaded
frames without copying them between processes. A failure on a thread is raised again in the caller."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
POLL_S = 0.1
"""How often a thread blocked on a full or empty queue checks whether the other side stopped."""
_DONE = object()


class _Stoppable:
    """A bounded queue shared by one thread and the caller, either of which may stop early."""

    def __init__(self, maxsize: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def put(self, value: object) -> bool:
        """Enqueue `value` unless the other side stopped (then False)."""
        while not self.stop.is_set():
            try:
                self.queue.put(value, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> object:
        """The next value, or `_DONE` once the other side stopped."""
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return _DONE


class ReadAhead(_Stoppable, Generic[T]):
    """Iterate `produce()` on a thread, at most `maxsize` values ahead of the caller."""

    def __init__(self, produce: Callable[[], Iterator[T]], maxsize: int) -> None:
        super().__init__(maxsize)
        self._thread = threading.Thread(target=self._run, args=(produce,), name="predict-read", daemon=True)

    def _run(self, produce: Callable[[], Iterator[T]]) -> None:
        """The thread: enqueue every value, then the end (or the error that ended it)."""
        try:
            for value in produce():
                if not self.put(value):
                    return
        except BaseException as err:  # noqa: BLE001 - raised again in the caller
            self.error = err
        self.put(_DONE)

    def __iter__(self) -> Iterator[T]:
        """The produced values in order; stops the thread if the caller stops early."""
        self._thread.start()
        try:
            while (value := self.get()) is not _DONE:
                yield value  # type: ignore[misc]
        finally:
            self.stop.set()
            self._thread.join()
        if self.error is not None:
            raise self.error


class WriteBehind(_Stoppable, Generic[T]):
    """Call `consume(value)` on `threads` threads for every value `send` by the caller, at most `maxsize` behind
    (`consume` must be safe to call from several threads at once)."""

    def __init__(self, consume: Callable[[T], None], maxsize: int, threads: int = 1) -> None:
        super().__init__(maxsize)
        self._threads = [threading.Thread(target=self._run, args=(consume,), name=f"predict-write-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, consume: Callable[[T], None]) -> None:
        """A thread: consume values until the end; an error stops them all (and is raised in `close`)."""
        try:
            while (value := self.get()) is not _DONE:
                consume(value)  # type: ignore[arg-type]
        except BaseException as err:  # noqa: BLE001 - raised again in the caller
            self.error = self.error or err
            self.stop.set()

    def send(self, value: T) -> None:
        """Queue `value`; raise a thread's error if they stopped on one."""
        if not self.put(value) and self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait until everything queued is consumed; raise a thread's error if any."""
        for _ in self._threads:
            self.put(_DONE)
        self._join()

    def _join(self) -> None:
        """Wait for every thread; raise the first error one stopped on."""
        for thread in self._threads:
            thread.join()
        if self.error is not None:
            raise self.error

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """On leaving normally, `close`; on an error, stop the threads without waiting for the queue."""
        if kind is None:
            self.close()
        else:
            self.stop.set()
            for thread in self._threads:
                thread.join()
