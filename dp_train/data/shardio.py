"""Shard streams with a read timeout: a shard that stops delivering bytes fails instead of hanging.

A read from a hung network mount (or a FIFO nobody writes) blocks in the kernel and cannot be
interrupted in its own thread. `TimedStream` therefore opens and reads the shard in a daemon
thread that hands chunks over a small queue; the reader waits at most `timeout` seconds for the
next chunk and then raises `TimeoutError`, which the stream counts like any unreadable shard. A
thread stuck in the kernel stays blocked (it holds one file and one chunk) until the read returns
or the worker process ends.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from webdataset.gopen import gopen

CHUNK = 1 << 20
"""Bytes read per call by the reader thread."""


class TimedStream:
    """A read-only file-like over a shard URL whose `read` waits at most `timeout` seconds for data."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self._chunks: queue.Queue = queue.Queue(maxsize=4)
        self._chunk, self._pos, self._eof = b"", 0, False
        self._closed = threading.Event()
        threading.Thread(target=self._pump, name=f"shard-reader {url}", daemon=True).start()

    def _pump(self) -> None:
        """Open the URL and queue its chunks, then b"" (end) or the exception that stopped it."""
        try:
            with gopen(self.url) as stream:
                while not self._closed.is_set():
                    chunk = stream.read(CHUNK)
                    self._put(chunk)
                    if not chunk:
                        return
        except Exception as err:  # noqa: BLE001 - handed to the reading thread, which reports it
            self._put(err)

    def _put(self, item: Any) -> None:
        """Queue an item, giving up once the reader has closed the stream."""
        while not self._closed.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next_chunk(self) -> bytes:
        """The next chunk from the thread; raises its exception, or TimeoutError past `timeout`."""
        try:
            item = self._chunks.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no data for {self.timeout:g} s (stalled read; see data.shard_read_timeout)") from None
        if isinstance(item, Exception):
            raise item
        return item

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that remain for a negative size); b"" at the end."""
        parts, wanted = [], size
        while wanted != 0 and not self._eof:
            if self._pos == len(self._chunk):
                self._chunk, self._pos = self._next_chunk(), 0
                self._eof = not self._chunk
                continue
            end = len(self._chunk) if wanted < 0 else min(len(self._chunk), self._pos + wanted)
            parts.append(self._chunk[self._pos:end])
            wanted -= (end - self._pos) if wanted > 0 else 0
            self._pos = end
        return b"".join(parts)

    def close(self) -> None:
        """Stop the reader thread at its next chunk."""
        self._closed.set()

    def __enter__(self) -> TimedStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
