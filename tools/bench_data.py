"""Benchmark the training data pipeline: samples/s per dataloader worker, against a naive loader.

The pipeline is the real train path (`DepthDataModule` -> `TrainStream` -> `decode_sample`
-> `TrainTransform(size, AugmentConfig())` -> `collate`), batch size 1, `num_workers=0` so
everything runs in this process with `--threads` OpenCV/torch threads (default 1): its rate
is the throughput of one dataloader worker. The baseline is a typical hand-written map-style
`Dataset` over loose files (PIL JPEG decode, `np.load` of float32 depth, PIL crop/resize, flip,
the same photometric augmentation with albumentations' stock ColorJitter and GaussNoise instead
of the pipeline's one-pass versions, same parameters and random draws, canonical inverse depth,
float tensors) given the same scenes with the same crops and flips: the same output. Both are
also timed with photometric augmentation off (geometry and targets only).

The loaders take turns sample by sample, so load from other processes hits them alike;
rates are medians over `--rounds`, speedups medians of the per-round ratios. A last,
instrumented pass over the same samples splits the pipeline's time into stages by wrapping
the very functions the stream calls (exclusive times: nested stages are not counted twice).

The scenes (`write_synthetic_shards`, about 1 s each at 1536x1536) and their loose copies
are written once and reused from `--work-dir` (default: a folder in the system temp dir).

    python tools/bench_data.py                      # 24 scenes at 1536x1536, 48 timed samples
    python tools/bench_data.py --size 512 --count 8 --samples 16 --rounds 1
    python tools/bench_data.py --json               # one JSON line instead of the tables
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dp_train.data import augment, samples, stream
from dp_train.data.augment import AugmentConfig
from dp_train.data.datamodule import DepthDataModule
from dp_train.data.health import SourceHealth
from dp_train.data.sources import SourceConfig, raw_records
from dp_train.data.stream import sample_seed
from dp_train.shards import decode, decode_sample, shard_urls, write_text_atomic
from dp_train.synth import write_synthetic_shards

PREFIX = "bench"
SEED = 0
TARGET_SAMPLES_PER_S = 15.0
TARGET_SPEEDUP = 2.0
NO_PHOTOMETRIC = AugmentConfig(color_jitter_prob=0.0, blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0)
LOADERS = {  # result key -> (table label, the baseline it is compared with)
    "pipeline": ("dp_train TrainStream", "baseline"),
    "baseline": ("naive PIL Dataset (loose files)", "baseline"),
    "pipeline_no_photometric": ("TrainStream, photometric off", "baseline_no_photometric"),
    "baseline_no_photometric": ("naive PIL Dataset, photometric off", "baseline_no_photometric"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1536, help="scene and network input side (pixels)")
    parser.add_argument("--count", type=int, default=24, help="synthetic scenes in the shard set")
    parser.add_argument("--samples", type=int, default=48,
                        help="timed samples per loader and round (the stream repeats the scenes)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed samples before timing")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenCV and torch threads (1: like one worker on one core)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "dp_train_bench_data")
    parser.add_argument("--json", action="store_true", help="print one JSON result line")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- data set


def dataset_dir(args: argparse.Namespace) -> Path:
    """Folder of the cached shard set for this size and scene count."""
    return args.work_dir / f"synth{args.size}x{args.count}"


def build_dataset(root: Path, size: int, count: int) -> Path:
    """Write the shards and their loose copies under `root` unless already there; returns the shard index."""
    index = root / f"{PREFIX}.index.json"
    manifest = root / "loose" / "manifest.json"
    if not index.is_file():
        write_synthetic_shards(root, PREFIX, count, size=(size, size), seed=SEED)
    if not manifest.is_file():
        keys = write_loose(index, root / "loose")
        write_text_atomic(manifest, json.dumps(keys) + "\n")
    return index


def write_loose(index: Path, out_dir: Path) -> list[str]:
    """Copy every shard sample to loose files: KEY.jpg (the shard's own Pillow JPEG bytes, so both
    loaders decode identical images), KEY.npy (float32 depth) and KEY.json ({"f_px": ...})."""
    out_dir.mkdir(parents=True, exist_ok=True)
    health = SourceHealth("loose", max_bad_fraction=0.0, min_records=1)
    keys = []
    for raw in raw_records(shard_urls(index), 1, 0, health):
        sample = decode_sample(raw)
        (out_dir / f"{sample.key}.jpg").write_bytes(raw["jpg"])
        np.save(out_dir / f"{sample.key}.npy", sample.depth.astype(np.float32))
        (out_dir / f"{sample.key}.json").write_text(json.dumps({"f_px": sample.meta.f_px}))
        keys.append(sample.key)
    return keys


# ----------------------------------------------------------------------------- loaders


def pipeline_loader(index: Path, size: int, total: int, cfg: AugmentConfig | None = None) -> DataLoader:
    """The real train loader (epoch 0, seed 0): batch size 1, no worker processes."""
    dm = DepthDataModule(
        train_sources=[SourceConfig("synth", str(index))], image_size=size, batch_size=1,
        samples_per_epoch=total, num_workers=0, augment=cfg or AugmentConfig(), seed=SEED, pin_memory=False,
    )
    dm.setup("fit")
    return dm.train_dataloader()


class LooseFileDataset(Dataset):
    """A typical hand-written loader: PIL decode, PIL crop/resize, flip, photometric augmentation,
    inverse depth, float tensors.

    Item i is scene `keys[i]` with the crop, flip and photometric parameters that TrainTransform
    draws from `seeds[i]`, so both loaders do the same work on the same crops.
    """

    def __init__(self, root: Path, keys: list[str], seeds: list[int], size: int, cfg: AugmentConfig) -> None:
        self.root, self.keys, self.seeds, self.size, self.cfg = root, keys, seeds, size, cfg
        self.colour_jitter = stock_transforms(augment.colour_jitter(cfg))
        self.degradation = stock_transforms(augment.degradation(cfg))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        key, size = self.keys[index], self.size
        image = Image.open(self.root / f"{key}.jpg").convert("RGB")
        depth = np.load(self.root / f"{key}.npy")
        f_px = json.loads((self.root / f"{key}.json").read_text())["f_px"]
        box, flip, photometric_seed = self.draw(depth.shape, self.seeds[index])
        image = image.crop(box).resize((size, size), Image.BILINEAR)
        depth_view = Image.fromarray(depth).crop(box).resize((size, size), Image.NEAREST)
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            depth_view = depth_view.transpose(Image.FLIP_LEFT_RIGHT)
        rgb = self.photometric(np.asarray(image), photometric_seed).astype(np.float32) / 255.0
        depth = np.asarray(depth_view, dtype=np.float32)
        valid = depth > 0
        target = np.zeros_like(depth)
        target[valid] = f_px * size / (box[2] - box[0]) / (size * depth[valid])
        return {
            "image": torch.from_numpy(rgb).permute(2, 0, 1),
            "target": torch.from_numpy(target)[None],
            "valid": torch.from_numpy(valid)[None],
        }

    def draw(self, shape: tuple[int, int], seed: int) -> tuple[tuple[int, int, int, int], bool, int]:
        """PIL crop box (left, top, right, bottom), flip and photometric seed, drawn like TrainTransform."""
        rng = np.random.default_rng(seed)
        height, width = shape
        side = max(1, int(round(min(height, width) / rng.uniform(*self.cfg.zoom_range))))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        flip = bool(rng.random() < self.cfg.flip_prob)
        return (left, top, left + side, top + side), flip, int(rng.integers(2**31))

    def photometric(self, image: np.ndarray, seed: int) -> np.ndarray:
        """Colour jitter then degradation at network resolution, seeded like TrainTransform."""
        self.colour_jitter.set_random_seed(seed)
        self.degradation.set_random_seed(seed + 1)
        return self.degradation(image=self.colour_jitter(image=image)["image"])["image"]


def stock_transforms(pipeline: A.Compose) -> A.Compose:
    """`pipeline` with its one-pass colour jitter and luma noise replaced by the stock albumentations
    transforms they subclass (same parameters, same random draws): what a hand-written loader uses."""

    def stock(t: A.BasicTransform) -> A.BasicTransform:
        if isinstance(t, augment.AffineColorJitter):
            return A.ColorJitter(brightness=t.brightness, contrast=t.contrast, saturation=t.saturation, hue=t.hue, p=t.p)
        if isinstance(t, augment.LumaNoise):
            return A.GaussNoise(std_range=t.std_range, per_channel=False, p=t.p)
        return t

    return A.Compose([stock(t) for t in pipeline.transforms])


def run_round(args: argparse.Namespace, index: Path) -> dict[str, float]:
    """Samples/s of each of LOADERS on the same samples with the same crops and flips.

    The loaders take turns sample by sample, so load from other processes on the machine
    hits all of them alike; the baseline reads each scene the pipeline has just produced.
    """
    total = args.warmup + args.samples
    keys: list[str] = []  # filled in by the pipeline as it goes
    seeds = [sample_seed(SEED, 0, 0, i, 0) for i in range(total)]  # the stream's per-sample seeds
    def baseline(cfg: AugmentConfig) -> Iterator[dict]:
        dataset = LooseFileDataset(index.parent / "loose", keys, seeds, args.size, cfg)
        return iter(DataLoader(dataset, batch_size=1, sampler=range(total), num_workers=0))

    loaders = {
        "pipeline": iter(pipeline_loader(index, args.size, total)),
        "baseline": baseline(AugmentConfig()),
        "pipeline_no_photometric": iter(pipeline_loader(index, args.size, total, NO_PHOTOMETRIC)),
        "baseline_no_photometric": baseline(NO_PHOTOMETRIC),
    }
    seconds = dict.fromkeys(loaders, 0.0)
    for i in range(total):
        for name, batches in loaders.items():
            start = time.perf_counter()
            batch = next(batches)
            if i >= args.warmup:
                seconds[name] += time.perf_counter() - start
            if name == "pipeline":
                keys.extend(batch["key"])
    return {name: args.samples / s for name, s in seconds.items()}


# ----------------------------------------------------------------------------- stage breakdown


class StageTimer:
    """Accumulates exclusive wall time per stage name (time in nested stages is not counted twice)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._nested: list[float] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as `name`."""
        self._nested.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def wrap(self, name: str, fn: Callable) -> Callable:
        """`fn`, timed as `name` on every call."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return fn(*args, **kwargs)

        return timed

    def wrap_iterator(self, name: str, fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
        """Generator function `fn`, each item's production timed as `name`."""

        def timed(*args: Any, **kwargs: Any) -> Iterator:
            items = fn(*args, **kwargs)
            while True:
                with self.stage(name):
                    item = next(items, StopIteration)
                if item is StopIteration:
                    return
                yield item

        return timed


class TimedCalls:
    """Proxy of a callable object (e.g. an albumentations Compose) whose calls are timed as `name`."""

    def __init__(self, timer: StageTimer, name: str, target: Any) -> None:
        self._call, self._target = timer.wrap(name, target), target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target, attr)


STAGES = {  # (module, function the stream calls through that module's globals) -> stage name
    (stream, "raw_records"): "read raw record",
    (decode, "_decode_image"): "decode image",
    (decode, "_decode_depth"): "decode depth",
    (samples, "decode_sample"): "decode: json, checks",
    (augment, "make_view"): "crop, resize, flip",
    (augment, "inverse_depth_target"): "target (inverse depth)",
    (stream, "collate"): "collate",
}
TRANSFORM_STAGES = {"recolour": "colour jitter", "degradation": "blur, noise, JPEG"}  # TrainTransform attribute
REPORT_ORDER = [*STAGES.values(), *TRANSFORM_STAGES.values()]


@contextlib.contextmanager
def instrumented(loader: DataLoader, timer: StageTimer) -> Iterator[None]:
    """Patch the stream's stage functions (and the loader's photometric transforms) with timed wrappers."""
    transform = loader.dataset.transform
    with contextlib.ExitStack() as patches:
        for (module, name), stage in STAGES.items():
            wrap = timer.wrap_iterator if name == "raw_records" else timer.wrap
            patches.enter_context(mock.patch.object(module, name, wrap(stage, getattr(module, name))))
        for attribute, stage in TRANSFORM_STAGES.items():
            timed = TimedCalls(timer, stage, getattr(transform, attribute))
            patches.enter_context(mock.patch.object(transform, attribute, timed))
        yield


def stage_breakdown(args: argparse.Namespace, index: Path) -> dict[str, float]:
    """Milliseconds per sample in each pipeline stage over the same timed samples; "other" is the rest."""
    loader = pipeline_loader(index, args.size, args.warmup + args.samples)
    timer = StageTimer()
    with instrumented(loader, timer):
        batches = iter(loader)
        for _ in range(args.warmup):
            next(batches)
        timer.seconds.clear()
        start = time.perf_counter()
        for _ in range(args.samples):
            next(batches)
        wall = time.perf_counter() - start
    ms = {name: 1e3 * timer.seconds[name] / args.samples for name in REPORT_ORDER}
    ms["other (stream bookkeeping)"] = 1e3 * (wall - sum(timer.seconds.values())) / args.samples
    return ms


# ----------------------------------------------------------------------------- report


def summarize(args: argparse.Namespace, rounds: list[dict[str, float]], stages: dict[str, float]) -> dict:
    """The result as a JSON-ready dict: medians over rounds (speedups: medians of per-round ratios)."""

    def median(value: Callable[[dict[str, float]], float]) -> float:
        return round(statistics.median(value(r) for r in rounds), 3)

    rates = {name: median(lambda r, name=name: r[name]) for name in LOADERS}
    speedups = {name: median(lambda r, name=name, base=base: r[name] / r[base]) for name, (_, base) in LOADERS.items()}
    return {
        "samples_per_s_per_worker": rates["pipeline"],
        "baseline_samples_per_s_per_worker": rates["baseline"],
        "speedup_vs_baseline": speedups["pipeline"],
        "no_photometric_samples_per_s_per_worker": rates["pipeline_no_photometric"],
        "no_photometric_baseline_samples_per_s_per_worker": rates["baseline_no_photometric"],
        "no_photometric_speedup_vs_baseline": speedups["pipeline_no_photometric"],
        "size": args.size, "scenes": args.count, "samples": args.samples, "warmup": args.warmup,
        "rounds": len(rounds), "threads": args.threads,
        "round_samples_per_s": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "stage_ms_per_sample": {name: round(ms, 2) for name, ms in stages.items()},
    }


def print_tables(result: dict) -> None:
    """Markdown tables: throughput and speedups, the targets, then the pipeline's stage breakdown."""
    rows = {  # loader -> (rate key, speedup key or None for a baseline)
        "pipeline": ("samples_per_s_per_worker", "speedup_vs_baseline"),
        "baseline": ("baseline_samples_per_s_per_worker", None),
        "pipeline_no_photometric": ("no_photometric_samples_per_s_per_worker", "no_photometric_speedup_vs_baseline"),
        "baseline_no_photometric": ("no_photometric_baseline_samples_per_s_per_worker", None),
    }
    print(f"{result['size']}x{result['size']}, {result['samples']} samples after {result['warmup']} warm-up, "
          f"median of {result['rounds']} round(s), {result['threads']} thread(s) per worker\n")
    print("| loader | samples/s per worker | ms/sample | vs its naive baseline |\n|---|---:|---:|---:|")
    for key, (label, _) in LOADERS.items():
        rate_key, speedup_key = rows[key]
        rate = result[rate_key]
        speedup = f"{result[speedup_key]:.2f}x" if speedup_key else "1.00x"
        print(f"| {label} | {rate:.2f} | {1e3 / rate:.0f} | {speedup} |")
    rate, speedup = result["samples_per_s_per_worker"], result["speedup_vs_baseline"]
    met = {True: "met", False: "missed"}
    print(f"\ntargets: >= {TARGET_SAMPLES_PER_S:g} samples/s per worker {met[rate >= TARGET_SAMPLES_PER_S]}, "
          f">= {TARGET_SPEEDUP:g}x baseline {met[speedup >= TARGET_SPEEDUP]}")
    stages = result["stage_ms_per_sample"]
    total = sum(stages.values())
    print("\n| pipeline stage | ms/sample | share |\n|---|---:|---:|")
    for name, ms in stages.items():
        print(f"| {name} | {ms:.1f} | {100 * ms / total:.0f}% |")
    print(f"| total (instrumented) | {total:.1f} | 100% |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    index = build_dataset(dataset_dir(args), args.size, args.count)
    rounds = [run_round(args, index) for _ in range(args.rounds)]
    result = summarize(args, rounds, stage_breakdown(args, index))
    if args.json:
        print(json.dumps(result))
    else:
        print_tables(result)


if __name__ == "__main__":
    main()
