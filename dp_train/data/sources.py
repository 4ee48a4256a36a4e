"""A source of a recipe (its shards, weight and flags) and reading its raw records: shards opened with a read
timeout, lost or cut-short shards counted as the bad records they held, duplicate keys refused, a shuffle buffer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from braceexpand import braceexpand

from dp_train.data.health import DataError, SourceHealth
from dp_train.data.shardio import TimedStream
from dp_train.shards import shard_counts, shard_urls

DEFAULT_READ_TIMEOUT = 300.0
"""Seconds a shard may deliver no bytes before it fails (`data.shard_read_timeout`): long enough for a slow
network mount's first byte, short enough that a hung one stops the run instead of hanging it."""


@dataclass(frozen=True)
class SourceConfig:
    """One dataset in a recipe: its shards, mixing weight and flags.

    Flags left as None are taken from each sample's json; set ones override it.
    """

    name: str
    urls: str | list[str]
    """Shard URL(s): local paths or anything webdataset opens, brace patterns allowed, or a
    local `*.index.json` written with the shards (its shards are read in order)."""
    weight: float = 1.0
    metric: bool | None = None
    synthetic: bool | None = None
    sparse: bool | None = None
    depth_range: tuple[float, float] | None = None
    """[min, max] metres: ground-truth depths outside are invalid (not trained on, not evaluated), e.g. the
    per-benchmark evaluation ranges of the paper's Tab. 18 in recipes/eval.yaml. Bounds are inclusive (the
    paper does not say); applies to metric samples only (relative depth has no metres)."""
    sequence: bool = False
    """The samples are frames of clips, keyed `<clip><_ or - or /><frame number>` (`alley_1_0007`,
    `scene/000012`; `clip_and_frame`): `test` and `validate` also score the temporal stability of the predicted
    depth between consecutive frames (`temporal_change`, dp_train/evaluation/temporal.py). A key without a
    frame number is a bad record."""

    def __post_init__(self) -> None:
        if self.depth_range is not None:
            low, high = self.depth_range
            if not 0 <= low < high:
                raise ValueError(f"source {self.name!r}: depth_range {list(self.depth_range)} must be [min, max] "
                                 "metres with 0 <= min < max")

    def shard_urls(self) -> list[str]:
        """Every shard URL, brace patterns expanded, in a stable order."""
        patterns = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        urls = [
            url
            for pattern in patterns
            for url in (shard_urls(pattern) if pattern.endswith(".index.json") else braceexpand(pattern))
        ]
        if not urls:
            raise ValueError(f"source {self.name!r} has no shard URLs")
        return urls

    def check_local_shards(self) -> None:
        """Raise DataError when none of the source's shards exists (local paths only: URLs and `pipe:` commands
        are opened by webdataset), so a typo in `urls` stops the run at setup, not in the first data worker."""
        urls = self.shard_urls()
        local = [url for url in urls if "://" not in url and not url.startswith("pipe:")]
        if local and len(local) == len(urls) and not any(Path(url).is_file() for url in local):
            raise DataError(f"source {self.name!r}: none of its {len(local)} shard file(s) exists (first: {local[0]})")

    def shard_sizes(self) -> dict[str, int] | None:
        """Samples per shard URL when every pattern is a shard index (None: unknown without reading)."""
        patterns = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        if not all(p.endswith(".index.json") for p in patterns):
            return None
        return {url: count for p in patterns for url, count in zip(shard_urls(p), shard_counts(p))}


SEQUENCE_KEY = re.compile(r"(?P<clip>.*?)[_/-]?(?P<frame>[0-9]+)")
"""A sequence source's key: the clip's name, an optional separator, and the frame number that ends the key."""


def clip_and_frame(key: str) -> tuple[str, int] | None:
    """(clip name, frame number) of a sequence source's sample key (`alley_1_0007` -> (`alley_1`, 7)), or None
    for a key that does not end in a frame number."""
    match = SEQUENCE_KEY.fullmatch(key)
    return (match["clip"], int(match["frame"])) if match else None


def describe_error(err: BaseException) -> str:
    """`Type: message` on one line; OS errors by their text ("No such file or directory"), not their errno."""
    if isinstance(err, OSError) and err.strerror:
        return f"{type(err).__name__}: {err.strerror}"
    return f"{type(err).__name__}: {err.args[0] if err.args else err}"


def raw_records(shards: list[str], stride: int, offset: int, health: SourceHealth,
                sizes: dict[str, int] | None = None, timeout: float = DEFAULT_READ_TIMEOUT) -> Iterator[dict]:
    """Raw webdataset records of `shards`, keeping every `stride`-th from `offset`.

    A shard that cannot be opened, is cut short or stalls (delivers no bytes for `timeout` seconds) counts as
    one bad record, or, with `sizes` (samples per shard from its index), as the samples of it this reader
    would have kept and did not: a lost shard weighs what it held (webdataset may report the same broken
    stream at several levels: counted once). A shard that ends without error with fewer or more records than
    its index lists (a damaged tar header ends a tar early) counts the difference as bad. A key met again in
    this pass is a bad record, not read twice.
    """
    keys: set[str] = set()
    for url in shards:
        failed: list[Exception] = []

        def on_error(err: Exception) -> bool:
            failed.append(err)
            return True

        with TimedStream(url, timeout) as stream:
            files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=on_error)
            count = -1
            for count, record in enumerate(wds.tariterators.group_by_keys(files, handler=on_error)):
                if count % stride == offset:
                    if record["__key__"] in keys:
                        health.record_bad(f"{record['__key__']} in {url}: duplicate sample key (already read)")
                        continue
                    keys.add(record["__key__"])
                    yield record
        expected = sizes.get(url) if sizes is not None else None
        lost = lost_records(count + 1, expected, stride, offset, bool(failed))
        if lost:
            what = describe_error(failed[0]) if failed else "its tar ended"
            listed = f"; its index lists {expected}" if expected is not None else ""
            health.record_bad(f"shard {url}: {what} after {count + 1} samples{listed}", lost)


def lost_records(read: int, expected: int | None, stride: int, offset: int, failed: bool) -> int:
    """Bad records for a shard of which `read` records were read (`expected`: its index's count, None when
    unknown): none for a shard read whole, else this reader's share (every `stride`-th from `offset`) of the
    difference, at least one."""
    if not failed and (expected is None or read == expected):
        return 0
    if expected is None:
        return 1
    return max(abs(len(range(offset, expected, stride)) - len(range(offset, read, stride))), 1)


def shuffled(records: Iterator[dict], buffer: int, rng: np.random.Generator) -> Iterator[dict]:
    """Shuffle a stream through a buffer of `buffer` raw (still compressed) records."""
    pool: list[dict] = []
    for record in records:
        pool.append(record)
        if len(pool) >= buffer:
            yield pool.pop(int(rng.integers(len(pool))))
    rng.shuffle(pool)
    yield from pool
