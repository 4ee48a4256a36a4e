"""Streaming shards to ranks and workers: coverage, mixing, targets under augmentation, bad data."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dp_train.data.augment import AugmentConfig, EvalTransform, TrainTransform
from dp_train.data.datamodule import DepthDataModule
from dp_train.data.loader import wait_for_exit
from dp_train.shards import SampleMeta, ShardWriter, encode_sample, make_sample
from dp_train.data.health import DataError
from dp_train.data.sources import SourceConfig
from dp_train.data.stream import TrainStream
from tests.helpers.cli import child_env
from tests.helpers.plane_samples import SIZE, datamodule, keys_of, plane_sample, raw_tar


def write_source(root: Path, name: str, count: int, per_shard: int, **meta) -> SourceConfig:
    """Shards of `count` plane samples keyed `{name}-{i}`; returns a source reading them."""
    with ShardWriter(root, name, max_samples=per_shard) as writer:
        for i in range(count):
            writer.write(plane_sample(f"{name}-{i:04d}", **meta))
    shards = sorted(root.glob(f"{name}-*.tar"))
    return SourceConfig(name=name, urls=[str(p) for p in shards])


def rank_loader(dm: DepthDataModule, rank: int, world: int, split: str):
    dm.setup("fit")
    stream = dm.train_stream if split == "train" else dm.val_stream
    stream.set_distributed(rank, world)
    return dm.train_dataloader() if split == "train" else dm.val_dataloader()


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
@pytest.mark.parametrize("shards", [6, 1])
def test_validation_covers_every_sample_once_over_2_ranks_x_2_workers(tmp_path, start_method, shards):
    source = write_source(tmp_path, "val", 22, per_shard=-(-22 // shards))
    seen = []
    for rank in range(2):
        dm = datamodule(val=[source], num_workers=2, worker_start_method=start_method)
        seen.append(keys_of(rank_loader(dm, rank, 2, "val")))
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"val-{i:04d}" for i in range(22)]


def test_train_ranks_get_equal_batches_and_distinct_samples(tmp_path):
    source = write_source(tmp_path, "train", 40, per_shard=5)
    per_rank = []
    for rank in range(2):
        dm = datamodule(train=[source], samples_per_epoch=32)
        batches = list(rank_loader(dm, rank, 2, "train"))
        assert len(batches) == 8
        per_rank.append(keys_of(batches))
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert len(set(per_rank[0])) == len(per_rank[0]) == 16


def test_train_stream_is_reproducible_and_changes_with_the_epoch(tmp_path):
    source = write_source(tmp_path, "train", 20, per_shard=5)

    def epoch_keys(epoch: int, seed: int = 0) -> list[str]:
        dm = datamodule(train=[source], samples_per_epoch=8, seed=seed)
        dm.setup("fit")
        dm.train_stream.epoch = epoch
        return keys_of(iter(dm.train_stream))

    assert epoch_keys(0) == epoch_keys(0)
    assert epoch_keys(0) != epoch_keys(1)
    assert epoch_keys(0) != epoch_keys(0, seed=1)


def test_train_batches_split_across_workers_without_duplicates(tmp_path):
    source = write_source(tmp_path, "train", 40, per_shard=5)
    dm = datamodule(train=[source], samples_per_epoch=20, num_workers=2, worker_start_method="forkserver")
    batches = list(rank_loader(dm, 0, 1, "train"))
    assert len(batches) == 10
    assert len(set(keys_of(batches))) == 20


@pytest.mark.parametrize(("world_size", "expected"), [(1, None), (2, "forkserver")])
def test_workers_of_multi_process_runs_start_from_a_fork_server(tmp_path, world_size, expected):
    """A worker forked from a DDP rank can inherit a lock held by a communication thread and hang forever."""
    dm = datamodule(train=[write_source(tmp_path, "train", 4, per_shard=4)], num_workers=1)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=world_size)
    dm.setup("fit")
    context = dm.train_dataloader().multiprocessing_context
    assert (context and context.get_start_method()) == expected


UNPICKLED_AFTER_PRELOAD = """
import importlib, pickle, sys
from dp_train.data.loader import FORKSERVER_PRELOAD
for module in FORKSERVER_PRELOAD:
    importlib.import_module(module)
before = set(sys.modules)
pickle.loads(sys.stdin.buffer.read())
print(sorted(set(sys.modules) - before))
"""
"""Prints the modules that unpickling stdin imports in a process that imported the fork server's preload."""


@pytest.mark.slow
def test_a_fork_server_preloads_every_module_its_workers_unpickle(tmp_path):
    """A worker forked from the fork server starts in ~0.1 s only if it imports nothing itself (~5 s)."""
    source = write_source(tmp_path, "a", 4, per_shard=4)
    dm = datamodule(train=[source], val=[source], num_workers=1, worker_start_method="forkserver")
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        sent = pickle.dumps((loader.dataset, loader.worker_init_fn, loader.collate_fn))
        done = subprocess.run([sys.executable, "-c", UNPICKLED_AFTER_PRELOAD], input=sent, capture_output=True,
                              env=child_env(), timeout=600)
        assert (done.returncode, done.stdout.decode().strip()) == (0, "[]"), done.stderr.decode()[-2000:]


def test_an_unknown_worker_start_method_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"^data.worker_start_method='threads': choose one of"):
        datamodule(worker_start_method="threads")


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polled"])
def test_a_worker_learns_at_once_that_its_owner_was_killed(monkeypatch, pidfd):
    """What ends a dataloader worker with its training process (`end_with_owner`): waiting for a process lasts
    as long as it lives, and no longer once it is killed; without pidfds (macOS) too, once it is reaped."""
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open")
    owner = subprocess.Popen(["sleep", "60"])
    waiter = threading.Thread(target=wait_for_exit, args=(owner.pid,), daemon=True)
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive()
    owner.kill()
    owner.wait()
    waiter.join(timeout=5)
    assert not waiter.is_alive()


def test_mixing_weights_are_honoured(tmp_path):
    a = write_source(tmp_path, "a", 8, per_shard=4)
    b = write_source(tmp_path, "b", 8, per_shard=4)
    a, b = SourceConfig("a", a.urls, weight=3.0), SourceConfig("b", b.urls, weight=1.0)
    dm = datamodule(train=[a, b], samples_per_epoch=1200, batch_size=8, augment=AugmentConfig(color_jitter_prob=0))
    counts = Counter(int(s) for batch in rank_loader(dm, 0, 1, "train") for s in batch["source"])
    share = counts[0] / 1200
    assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 1200)  # within 4 sigma


def test_mixture_schedule_switches_on_the_exact_batch(tmp_path):
    a = write_source(tmp_path, "a", 8, per_shard=4)
    b = write_source(tmp_path, "b", 8, per_shard=4)
    dm = datamodule(train=[a, b], samples_per_epoch=20)
    dm.setup("fit")
    dm.set_mixture_schedule([(0, {"a": 1.0}), (4, {"b": 1.0})])
    sources = [set(batch["source"].tolist()) for batch in dm.train_dataloader()]
    assert sources[:4] == [{0}] * 4 and sources[4:] == [{1}] * 6
    with pytest.raises(ValueError, match="unknown sources \\['c'\\]"):
        dm.set_mixture_schedule([(0, {"c": 1.0})])


def slanted_plane(k: float = 0.3, d0: float = 5.0, f_px: float = 40.0, height: int = 48, width: int = 64):
    """A plane Z = d0 + k X seen by a pinhole camera: inverse depth is linear in the column."""
    u = np.arange(width) + 0.5 - width / 2
    inverse = (1 - k * u / f_px) / d0
    depth = np.tile(1.0 / inverse, (height, 1)).astype(np.float32)
    image = np.zeros((height, width, 3), np.uint8)
    meta = SampleMeta(dataset="plane", f_px=f_px, metric=True, synthetic=True)
    return make_sample("plane", image, depth, meta)


@pytest.mark.parametrize("seed", range(6))
def test_focal_and_target_stay_consistent_under_crop_resize_flip(seed):
    """After any crop/zoom/flip the view's focal length explains the plane's geometry, and C = f / (W D)."""
    k, d0 = 0.3, 5.0
    view = TrainTransform(SIZE, AugmentConfig(zoom_range=(1.0, 2.0)))(slanted_plane(k, d0), seed)
    assert view.valid.all()
    depth = view.f_px / (SIZE * view.target)  # metric depth recovered exactly as the model will
    slope = np.polyfit(np.arange(SIZE), 1.0 / depth[SIZE // 2], 1)[0]
    expected = k / (view.f_px * d0)  # |d(1/Z)/du| for the plane in the view's pixels
    assert abs(abs(slope) - expected) < 0.08 * expected


def test_eval_transform_scales_focal_with_the_width():
    sample = plane_sample("p", depth=2.0, f_px=30.0, height=24, width=32)
    view = EvalTransform(SIZE)(sample)
    assert view.f_px == pytest.approx(30.0 * SIZE / 32)
    np.testing.assert_allclose(view.target, view.f_px / (SIZE * 2.0), rtol=1e-6)


def test_depth_is_never_blurred_across_a_boundary():
    sample = plane_sample("edge", depth=1.0, height=40, width=40)
    sample.depth[:, 20:] = 10.0
    view = TrainTransform(SIZE, AugmentConfig(zoom_range=(1.0, 1.0), flip_prob=0))(sample, seed=0)
    inverse = view.target * SIZE / view.f_px  # 1 / depth per pixel
    near, far = np.isclose(inverse, 1.0, rtol=1e-6), np.isclose(inverse, 0.1, rtol=1e-6)
    assert (near | far).all() and near.any() and far.any()


def corrupted_records() -> list[dict]:
    """One record per kind of bad data the stream must skip."""
    def good(key):
        return encode_sample(plane_sample(key))

    def with_json(record, **changes):
        info = json.loads(record["json"]) | changes
        return record | {"json": json.dumps(info).encode()}

    nan_depth = good("nan")
    buffer = io.BytesIO()
    np.save(buffer, np.full((24, 32), np.nan, np.float16))
    nan_depth["depth.npy"] = buffer.getvalue()
    bad_image = good("badimage") | {"jpg": b"not a jpeg"}
    no_depth = {k: v for k, v in good("nodepth").items() if k != "depth.npy"}
    wrong_shape = good("shape")
    buffer = io.BytesIO()
    np.save(buffer, np.ones((5, 5), np.float16))
    wrong_shape["depth.npy"] = buffer.getvalue()
    no_focal = with_json(good("nofocal"), f_px=None)
    negative = good("negative")
    buffer = io.BytesIO()
    np.save(buffer, -np.ones((24, 32), np.float16))
    negative["depth.npy"] = buffer.getvalue()
    return [nan_depth, bad_image, no_depth, wrong_shape, no_focal, negative]


def test_bad_data_is_skipped_counted_and_never_trained_on(tmp_path):
    good = write_source(tmp_path, "good", 30, per_shard=10)
    raw_tar(tmp_path / "bad-000000.tar", corrupted_records())
    truncated = tmp_path / "bad-000001.tar"
    full = tmp_path / "good-000000.tar"
    with tarfile.open(full) as tar:  # cut inside the data of the 4th sample's first member
        cut = next(m for m in tar.getmembers() if m.name.startswith("good-0003")).offset_data + 100
    truncated.write_bytes(full.read_bytes()[:cut])
    urls = good.urls + [str(tmp_path / "bad-000000.tar"), str(truncated), str(tmp_path / "missing.tar")]
    source = SourceConfig("mixed", urls)
    dm = datamodule(val=[source], max_bad_fraction=0.9)
    batches = list(rank_loader(dm, 0, 1, "val"))
    keys = keys_of(batches)
    # the good shards; the truncated copy's three complete samples repeat their keys: bad, not evaluated twice
    assert sorted(keys) == [f"good-{i:04d}" for i in range(30)]
    bad = sum(int(b["bad_records"][0]) for b in batches)
    assert bad == 6 + 3 + 1 + 1  # six bad records, three repeated keys, the truncated tar, the missing shard


def test_a_mostly_broken_source_stops_with_its_name(tmp_path):
    raw_tar(tmp_path / "broken.tar", corrupted_records() * 3)
    source = SourceConfig("broken-src", [str(tmp_path / "broken.tar")])
    stream = TrainStream([source], TrainTransform(SIZE), batch_size=1, samples_per_epoch=1, min_records_for_guard=5)
    with pytest.raises(DataError, match="source 'broken-src': 5 of 5 records failed"):
        next(iter(stream))


def test_batches_have_the_documented_layout(tmp_path):
    source = write_source(tmp_path, "train", 8, per_shard=4)
    dm = datamodule(train=[source], samples_per_epoch=4)
    batch = next(iter(rank_loader(dm, 0, 1, "train")))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["image"].dtype == torch.uint8
    normalized = dm.on_after_batch_transfer(batch, 0)["image"]
    assert normalized.dtype == torch.float32 and -1 <= normalized.min() and normalized.max() <= 1
    assert batch["target"].shape == batch["valid"].shape == (2, 1, SIZE, SIZE)
    for name in ("f_px", "metric", "synthetic", "sparse", "source", "has_alpha"):
        assert batch[name].shape == (2,), name
    assert batch["bad_records"].shape == (1,)


def test_only_validation_decodes_matting_alpha(tmp_path):
    source = write_source(tmp_path, "both", 4, per_shard=4, alpha=True)
    dm = datamodule(train=[source], val=[source], samples_per_epoch=4)
    train = next(iter(rank_loader(dm, 0, 1, "train")))
    assert "alpha" not in train and not train["has_alpha"].any()
    val = next(iter(rank_loader(dm, 0, 1, "val")))
    assert val["alpha"].shape == (2, 1, SIZE, SIZE) and val["has_alpha"].all()
    assert 0 < val["alpha"].max() <= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_validation_pads_ranks_to_equal_batch_counts(tmp_path, workers):
    """3 shards of 2 over 2 ranks: 4 + 2 samples. Both ranks yield the same number of batches (FSDP runs a
    forward on every rank together); the extra ones are flagged padding, and real samples are each seen once."""
    with ShardWriter(tmp_path, "uneven", max_samples=2) as writer:
        for i in range(6):
            writer.write(plane_sample(f"uneven-{i}"))
    source = SourceConfig("uneven", str(writer.index_path))
    per_rank = []
    for rank in range(2):
        dm = datamodule(val=[source], batch_size=1, num_workers=workers)
        per_rank.append(list(rank_loader(dm, rank, 2, "val")))
    assert len(per_rank[0]) == len(per_rank[1])
    real = [key for batches in per_rank for b in batches for key, pad in zip(b["key"], b["padding"]) if not pad]
    assert sorted(real) == [f"uneven-{i}" for i in range(6)]
    assert sum(int(b["padding"].sum()) for batches in per_rank for b in batches) > 0
