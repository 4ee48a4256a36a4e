"""Public depth benchmarks -> dp_train shards: the contract every reader keeps, and the conversion
(run by `python -m dp_train convert`, dp_train/convert/public.py).

Each format has a `find_<format>` function that lists the samples under a root folder (in the
main process; a problem with a whole group, such as a bad calibration file, skips the group's
samples with a reason) as Items whose `load` is a `load_<format>` call reading one sample in a
worker process, raising SkipSample with the file's name on bad input. The readers live by family:
`stereo` (Middlebury, Sintel, KITTI), `hdf5_sets` (NYUv2, Hypersim), `scans` (ETH3D, iBims-1),
`matting` (DIS5K and friends), `benchmarks` and `nuscenes`. `write_shards` converts the items in
parallel and writes shards, the skip list and the report exactly like make_shards, with the same
pieces: `errors` (error types), `readers` (file readers), `report` and `runner` (parallel run, writing).

Depth is stored in metres for every depth format here. Matting / boundary sets (DIS5K and
friends) have no depth: their samples store an all-zero depth map, i.e. every pixel invalid
(the schema's "no depth here"), `metric: false`, `f_px: null` and the alpha in `KEY.alpha.png`.
The expected layouts and commands are listed in docs/convert.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from dp_train.convert.errors import ConvertError, SkipSample
from dp_train.convert.report import N_BINS, Report, SampleStats, sample_stats, save_report, unusual_statistics
from dp_train.convert.runner import Result, check_output, collect_results, parallel_results, safe_result
from dp_train.shards import SampleMeta, ShardWriter, encode_sample, make_sample

Skipped = list[tuple[str, str]]  # (sample name, reason)


@dataclass(frozen=True)
class Loaded:
    """A sample as read from disk, before validation and encoding.

    `depth` is HxW in metres (non-finite or <= 0 = invalid), None for sets without depth;
    `mask` is an optional HxW bool (False = exclude); `alpha` an optional HxW matte in [0, 1].
    """

    image: np.ndarray
    depth: np.ndarray | None
    f_px: float | None
    mask: np.ndarray | None = None
    alpha: np.ndarray | None = None


@dataclass(frozen=True)
class Item:
    """One sample on disk: its unique key and the call that reads it, a partial of a module-level
    `load_<format>` (picklable, so it runs in a worker; raises SkipSample on bad input)."""

    key: str
    load: Callable[[], Loaded]


@dataclass(frozen=True)
class FormatInfo:
    """What every sample of a format is (stored in SampleMeta, listed in docs/convert.md)."""

    metric: bool
    synthetic: bool
    sparse: bool
    has_depth: bool = True


_MATTING = FormatInfo(metric=False, synthetic=False, sparse=False, has_depth=False)
FORMATS: dict[str, FormatInfo] = {
    "middlebury": FormatInfo(metric=True, synthetic=False, sparse=False),
    "sintel": FormatInfo(metric=True, synthetic=True, sparse=False),
    "kitti": FormatInfo(metric=True, synthetic=False, sparse=True),
    "nyu": FormatInfo(metric=True, synthetic=False, sparse=False),
    "eth3d": FormatInfo(metric=True, synthetic=False, sparse=False),
    "ibims": FormatInfo(metric=True, synthetic=False, sparse=False),
    "hypersim": FormatInfo(metric=True, synthetic=True, sparse=False),
    "dis5k": _MATTING,
    "matting": _MATTING,
}


def require_dir(path: Path, what: str) -> Path:
    """path, or ConvertError when it is not a folder."""
    if not path.is_dir():
        raise ConvertError(f"{what} {path}: no such folder (see docs/convert.md for the layout)")
    return path


def skip_group(keys: Sequence[str], where: Path, error: SkipSample) -> tuple[list[Item], Skipped]:
    """A group of samples whose shared file (a calibration in folder `where`) is unusable:
    every key is skipped with the reason."""
    return [], [(key, f"{where}: {error}") for key in keys]


def first_missing(paths: Sequence[Path]) -> str | None:
    """'no <file>' for the first path that is not a file, else None."""
    absent = next((p for p in paths if not p.is_file()), None)
    return None if absent is None else f"no {absent}"


def import_h5py() -> Any:
    """The h5py module, or ConvertError naming the extra that installs it (HDF5 formats only)."""
    try:
        import h5py
    except ImportError:
        raise ConvertError("reading HDF5 files (NYUv2 .mat, Hypersim) needs h5py: "
                           "pip install 'dp-train[convert]'") from None
    return h5py


def read_hdf5_array(path: Path, name: str = "dataset") -> np.ndarray:
    """The whole dataset `name` of an HDF5 file as a NumPy array."""
    with import_h5py().File(path, "r") as f:
        if name not in f:
            raise ValueError(f"no dataset '{name}' (has {sorted(f.keys())})")
        return np.asarray(f[name][()])


# ----------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class Settings:
    """What is stored for every sample of a run."""

    dataset: str
    info: FormatInfo
    depth_format: str = "npy16"
    image_format: str = "jpg"


def convert_item(item: Item, settings: Settings) -> Result:
    """Load, validate and encode one item (runs in a worker process); bad input -> a skip reason."""
    return safe_result(item.key, partial(_convert, item, settings))


def _convert(item: Item, settings: Settings) -> tuple[dict[str, bytes | str], SampleStats]:
    """convert_item without the error handling."""
    loaded = item.load()
    h, w = loaded.image.shape[:2]
    for name, plane in (("depth", loaded.depth), ("mask", loaded.mask), ("alpha", loaded.alpha)):
        if plane is not None and plane.shape != (h, w):
            raise SkipSample(f"size mismatch: image {w}x{h}, {name} shape {plane.shape}")
    info = settings.info
    depth = np.zeros((h, w), np.float32) if loaded.depth is None else loaded.depth
    meta = SampleMeta(settings.dataset, loaded.f_px, info.metric, info.synthetic, info.sparse,
                      "depth" if info.has_depth else "none")
    sample = make_sample(item.key, loaded.image, depth, meta, loaded.mask, loaded.alpha)
    if info.has_depth and not sample.valid.any():
        raise SkipSample("no valid depth pixels (all non-finite, <= 0 or masked)")
    raw = encode_sample(sample, settings.depth_format, settings.image_format)
    if not sample.valid.any():
        return raw, SampleStats(w, h, 0, math.inf, -math.inf, np.zeros(N_BINS, np.int64), loaded.f_px)
    return raw, sample_stats(sample.depth[sample.valid], w, h, loaded.f_px)


def _unique_keys(items: Sequence[Item], skipped: Skipped) -> list[Item]:
    """items without those whose key an earlier item already uses (those go to `skipped`)."""
    seen: set[str] = set()
    kept = []
    for item in items:
        if item.key in seen:
            skipped.append((item.key, "duplicate sample key"))
        else:
            seen.add(item.key)
            kept.append(item)
    return kept


def write_shards(
    items: Sequence[Item],
    skipped: Skipped,
    settings: Settings,
    out: Path,
    prefix: str,
    workers: int = 1,
    samples_per_shard: int = 1000,
) -> int:
    """Convert items into shards `out/{prefix}-*.tar` with index, skip list and report.

    Returns 0, or 1 when every sample was skipped; ConvertError when the output would
    replace existing shards.
    """
    check_output(out, prefix)
    skipped = list(skipped)
    items = _unique_keys(items, skipped)
    report = Report()
    with ShardWriter(out, prefix, max_samples=samples_per_shard,
                     depth_format=settings.depth_format, image_format=settings.image_format) as writer:
        results = parallel_results(partial(convert_item, settings=settings), items, workers)
        collect_results(tqdm(results, total=len(items), unit="sample", desc=settings.dataset, disable=None),
                        writer, report, skipped)
    info = settings.info
    summary = report.summary()
    if not report.hist.any():  # no depth at all (matting sets): no depth statistics
        summary["depth"] = None
    return save_report({
        "dataset": settings.dataset, "units": "m" if info.metric else "none", "metric": info.metric,
        "depth_kind": "depth", "synthetic": info.synthetic, "sparse": info.sparse,
        "samples_written": writer.num_samples, "samples_skipped": len(skipped),
        "shards": len(writer.shards), **summary, "warnings": unusual_statistics(summary, info.metric),
        "index": str(writer.index_path), "report": str(out / f"{prefix}.report.json"),
        "skipped_list": str(out / f"{prefix}.skipped.txt"),
    }, sorted(skipped))
