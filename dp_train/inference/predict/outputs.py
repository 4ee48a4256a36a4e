"""What `predict` writes: per image or frame `<stem>.npy` (metric depth) and `<stem>.png` (a picture of it),
each written to a temporary file and renamed (an interrupted run leaves no half-written output), and one row per
input in `summary.csv` / `summary.json`. `ResultWriter` runs on the writing threads."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from dp_train.inference.predict.errors import reason
from dp_train.inference.predict.inputs import Item, frame_name
from dp_train.inference.predict.runner import Prediction
from dp_train.utils.visualize import colorize_inverse_depth


@dataclass
class Record:
    """One row of the summary: the result for one input (an image, or a clip: its frames together)."""

    input: str
    width: int | None = None
    height: int | None = None
    focal_px: float | None = None
    focal_source: str | None = None
    depth_min: float | None = None
    depth_median: float | None = None
    depth_max: float | None = None
    depth_npy: str | None = None
    depth_png: str | None = None
    error: str | None = None
    frames: int | None = None
    """A clip's frames written (None for an image)."""
    temporal_change: float | None = None
    """A clip's mean frame-to-frame relative depth change (dp_train/evaluation/temporal.py)."""


@dataclass
class ClipTotals:
    """A clip's row as its frames are written: first frame's size and focal length, depth range, first error."""

    record: Record
    medians: list[float] = field(default_factory=list)


def depth_stats(depth: np.ndarray) -> tuple[float, float, float]:
    """Min, median and max of the finite depth values (NaN when there are none)."""
    finite = depth[np.isfinite(depth)]
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    return float(finite.min()), float(np.median(finite)), float(finite.max())


def save_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)` into `<path>.tmp`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    try:
        with open(partial, "wb") as fh:
            write(fh)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_depth(stem: Path, depth: np.ndarray) -> tuple[Path, Path]:
    """`<stem>.npy` (float32 metres) and `<stem>.png` (colour-mapped inverse depth); returns their paths."""
    npy, png = stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".png")
    save_atomic(npy, lambda fh: np.save(fh, depth))
    save_atomic(png, lambda fh: Image.fromarray(colorize_inverse_depth(depth)).save(fh, format="PNG"))
    return npy, png


class ResultWriter:
    """Writes each Prediction's files and keeps every input's summary row; a file's failure is warned about once
    per input and reason, and recorded."""

    def __init__(self, items: list[Item], warn: Callable[[str], None], progress: Callable[[], None]) -> None:
        self.items, self.warn, self.progress = items, warn, progress
        self.images: dict[int, Record] = {}
        self.clips = {i: ClipTotals(Record(str(item.path), frames=0)) for i, item in enumerate(items) if item.is_clip}
        self.warned: set[tuple[int, str]] = set()
        self.lock = threading.Lock()

    def __call__(self, prediction: Prediction) -> None:
        """Write one prediction's files and account it in its input's row (writing threads call it, several at
        once: the files and statistics outside the lock, the rows inside)."""
        frame, item = prediction.frame, self.items[prediction.frame.item]
        error, paths, stats = prediction.error, None, None
        if error is None:
            stem = item.output / frame_name(frame.index) if item.is_clip else item.output
            try:
                paths, stats = write_depth(stem, prediction.depth), depth_stats(prediction.depth)
            except OSError as err:
                error = reason(err)
        with self.lock:
            if error is not None:
                self._failed(frame.item, frame.name, error)
            elif item.is_clip:
                self._add_frame(self.clips[frame.item], prediction, stats)
            else:
                self.images[frame.item] = Record(str(item.path), frame.width, frame.height, prediction.focal_px,
                                                 prediction.focal_source, *stats, str(paths[0]), str(paths[1]))
            self.progress()

    def _failed(self, index: int, name: str, error: str) -> None:
        """Warn about a failed image or frame (once per input and reason) and keep the input's first error."""
        if (index, error) not in self.warned:
            self.warned.add((index, error))
            self.warn(f"warning: skipping {name}: {error}")
        if index in self.clips:
            self.clips[index].record.error = self.clips[index].record.error or error
        else:
            self.images[index] = Record(str(self.items[index].path), error=error)

    @staticmethod
    def _add_frame(totals: ClipTotals, prediction: Prediction, stats: tuple[float, float, float]) -> None:
        """Account a written frame (its depth's min, median, max) in its clip's row."""
        row, (low, median, high) = totals.record, stats
        if not row.frames:
            row.width, row.height = prediction.frame.width, prediction.frame.height
            row.focal_px, row.focal_source = prediction.focal_px, prediction.focal_source
            row.depth_min, row.depth_max = low, high
        row.depth_min, row.depth_max = min(row.depth_min, low), max(row.depth_max, high)
        totals.medians.append(median)
        row.frames += 1

    def records(self, temporal_change: Callable[[int], float | None]) -> list[Record]:
        """Every input's row in input order; a clip's with its frames' depth range (the median of the frames'
        medians), its output folder, its temporal change, and an error only when no frame was written."""
        rows = []
        for index, item in enumerate(self.items):
            if index not in self.clips:
                rows.append(self.images[index])
                continue
            totals = self.clips[index]
            row = totals.record
            if row.frames:
                row.depth_median = float(np.median(totals.medians))
                row.depth_npy = row.depth_png = str(item.output)
                row.temporal_change, row.error = temporal_change(index), None
            rows.append(row)
        return rows


def write_summary(records: list[Record], output_dir: Path, settings: dict[str, Any]) -> None:
    """Write `summary.csv` (one row per input) and `summary.json` (run settings + the same rows)."""
    rows = [asdict(r) for r in records]
    names = [f.name for f in fields(Record)]
    with open(output_dir / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    json_rows = [{k: _json_value(v) for k, v in row.items()} for row in rows]
    with open(output_dir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump({**settings, "images": json_rows}, fh, indent=2)
        fh.write("\n")


def _json_value(value: object) -> object:
    """NaN/inf floats become null so the JSON stays standard."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def tqdm_warn(message: str) -> None:
    """Print a warning line without breaking the progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
