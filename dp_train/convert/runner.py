"""Running per-sample work and writing its results, shared by make_shards and formats: the Result of one
sample (encoded, or the reason it was skipped), failure-safe per-sample work, the output check that refuses
to replace shards, running the samples in worker processes, and writing them while the report accumulates.
"""

from __future__ import annotations

import glob
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from dp_train.convert.errors import ConvertError, SkipSample
from dp_train.convert.report import Report, SampleStats
from dp_train.shards import ShardWriter


@dataclass
class Result:
    """A worker's answer for one Job: the encoded sample, or the reason it was skipped."""

    stem: str
    raw: dict[str, bytes | str] | None
    reason: str | None
    stats: SampleStats | None


def safe_result(stem: str, work: Callable[[], tuple[dict[str, bytes | str], SampleStats]]) -> Result:
    """Run one sample's conversion; any failure becomes a skipped Result carrying the reason,
    so that one bad file never stops a long conversion."""
    try:
        raw, stats = work()
    except SkipSample as e:
        return Result(stem, None, str(e), None)
    except Exception as e:
        return Result(stem, None, f"{type(e).__name__}: {e}", None)
    return Result(stem, raw, None, stats)


def check_output(out: Path, prefix: str) -> None:
    """ConvertError unless shards `prefix` can be written into `out` without replacing any."""
    if "/" in prefix or prefix.startswith("."):
        raise ConvertError(f"--prefix {prefix!r} must be a plain file-name prefix")
    if out.exists() and not out.is_dir():
        raise ConvertError(f"--out {out} exists and is not a folder")
    pattern = glob.escape(prefix)
    existing = sorted(out.glob(f"{pattern}.index.json")) + sorted(out.glob(f"{pattern}-*.tar"))
    if existing:
        raise ConvertError(f"{existing[0]} already exists: choose another --prefix or delete the old shards")


def parallel_results(work: Callable[[Any], Result], jobs: Sequence[Any], workers: int) -> Iterator[Result]:
    """work(job) for every job, in order, in `workers` processes (in this one when 1); `work`
    and the jobs must be picklable (module-level functions, partials, dataclasses)."""
    processes = min(workers, len(jobs))
    if processes <= 1:
        yield from map(work, jobs)
        return
    with multiprocessing.get_context().Pool(processes) as pool:
        yield from pool.imap(work, jobs, chunksize=1)


def collect_results(
    results: Iterable[Result], writer: ShardWriter, report: Report, skipped: list[tuple[str, str]]
) -> None:
    """Write every converted sample and fold its statistics into `report`; list the others in `skipped`."""
    for res in results:
        if res.raw is None:
            skipped.append((res.stem, str(res.reason)))
        else:
            writer.write_encoded(res.raw)
            report.add(res.stats)
