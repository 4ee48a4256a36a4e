"""Sample-level health of the data stream: samples that cannot teach anything, duplicates, shards that
disagree with their index, and validation sets that are partly or fully unreadable are counted, never
silently trained on or evaluated."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from dp_train.cli.main import main
from dp_train.data.augment import EvalTransform, TrainTransform
from dp_train.data.datamodule import DepthDataModule
from dp_train.shards import SampleError, ShardWriter, decode_sample, encode_sample
from dp_train.data.health import DataError, SourceHealth
from dp_train.data.sources import SourceConfig, raw_records
from dp_train.data.stream import TrainStream, ValStream
from tests.helpers.plane_samples import SIZE, keys_of, plane_sample, raw_tar


def val_stream(source: SourceConfig, max_bad_fraction: float = 0.05) -> ValStream:
    """A one-source validation stream, batch size 1."""
    return ValStream([source], EvalTransform(SIZE), batch_size=1, max_bad_fraction=max_bad_fraction)


@pytest.mark.parametrize("depth,mask", [(0.0, False), (1e-6, False), (1e30, False), (4.0, True)],
                         ids=["zero", "tiny", "huge", "masked"])
def test_a_sample_without_a_valid_pixel_is_bad_and_never_trained_on(tmp_path, depth, mask):
    good = [encode_sample(plane_sample(f"good-{i}")) for i in range(3)]
    bad = encode_sample(plane_sample("bad", depth=4.0), depth_format="npy32")
    buffer = io.BytesIO()
    np.save(buffer, np.full((24, 32), depth, np.float32))
    bad["depth.npy"] = buffer.getvalue()
    if mask:
        plane = io.BytesIO()
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(plane, format="PNG")
        bad["mask.png"] = plane.getvalue()
    raw_tar(tmp_path / "s.tar", [bad] + good)
    batches = list(val_stream(SourceConfig("s", [str(tmp_path / "s.tar")]), max_bad_fraction=0.5))
    assert sorted(keys_of(batches)) == ["good-0", "good-1", "good-2"]
    assert sum(int(b["bad_records"][0]) for b in batches) == 1


def test_a_duplicated_sample_is_counted_and_read_once(tmp_path):
    records = [encode_sample(plane_sample(f"k-{i}")) for i in range(4)]
    raw_tar(tmp_path / "a.tar", records)
    raw_tar(tmp_path / "b.tar", records[:1])
    batches = list(val_stream(SourceConfig("s", [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]),
                              max_bad_fraction=0.5))
    assert sorted(keys_of(batches)) == ["k-0", "k-1", "k-2", "k-3"]
    assert sum(int(b["bad_records"][0]) for b in batches) == 1


def test_a_shard_holding_fewer_samples_than_its_index_counts_them(tmp_path):
    with ShardWriter(tmp_path, "s", max_samples=4) as writer:
        for i in range(8):
            writer.write(plane_sample(f"s-{i}"))
    index = json.loads(writer.index_path.read_text())
    first = tmp_path / index["shards"][0]["name"]
    raw_tar(first, [encode_sample(plane_sample(f"s-{i}")) for i in range(2)])  # 2 of its 4 samples left
    batches = list(val_stream(SourceConfig("s", str(writer.index_path)), max_bad_fraction=0.5))
    assert len(keys_of(batches)) == 6
    assert sum(int(b["bad_records"][0]) for b in batches) == 2


@pytest.mark.parametrize("good", [0, 2])
def test_a_small_mostly_unreadable_validation_set_fails(tmp_path, good):
    records = [encode_sample(plane_sample(f"k-{i}")) for i in range(4)]
    for record in records[good:]:
        record["jpg"] = b"not an image"
    raw_tar(tmp_path / "v.tar", records)
    with pytest.raises(DataError, match=f"source 'v': {4 - good} of 4 records failed"):
        list(val_stream(SourceConfig("v", [str(tmp_path / "v.tar")])))


def test_a_16_bit_png_stored_as_jpg_is_refused_naming_the_sample():
    record = encode_sample(plane_sample("deep"))
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 32), 40000, np.uint16)).save(buffer, format="PNG")
    record["jpg"] = buffer.getvalue()
    with pytest.raises(SampleError, match="deep: .*mode I;16.*8-bit"):
        decode_sample(record)


def test_training_skips_samples_without_valid_pixels(tmp_path):
    records = [encode_sample(plane_sample(f"k-{i}")) for i in range(4)]
    records[0] = encode_sample(plane_sample("empty", depth=0.0))
    raw_tar(tmp_path / "t.tar", records)
    stream = TrainStream([SourceConfig("t", [str(tmp_path / "t.tar")])], TrainTransform(SIZE), batch_size=1,
                         samples_per_epoch=6, max_bad_fraction=0.5, shuffle_buffer=1)
    assert "empty" not in keys_of(list(stream))


def test_padding_batches_add_no_bad_records(tmp_path):
    """Validation logs the bad-record counts of its batches summed over ranks: padding copies must add none."""
    records = [encode_sample(plane_sample(f"k-{i}")) for i in range(6)]
    records[4]["jpg"] = b"not an image"
    shards = [records[:3], records[3:5], records[5:]]  # rank 0: shards 0 and 2 (4 samples), rank 1: shard 1
    for number, members in enumerate(shards):
        raw_tar(tmp_path / f"v-{number}.tar", members)
    index = {"schema_version": 1, "prefix": "v", "complete": True, "samples": 6,
             "shards": [{"name": f"v-{n}.tar", "samples": len(m)} for n, m in enumerate(shards)]}
    (tmp_path / "v.index.json").write_text(json.dumps(index))
    stream = val_stream(SourceConfig("v", str(tmp_path / "v.index.json")), max_bad_fraction=0.5)
    stream.set_distributed(1, 2)
    batches = list(stream)
    assert sum(int(b["bad_records"][0]) for b in batches if not b["padding"].all()) == 1
    assert any(b["padding"].all() for b in batches)
    assert all(int(b["bad_records"][0]) == 0 for b in batches if b["padding"].all())


def test_a_stalled_shard_fails_after_the_read_timeout_like_an_unreadable_one(tmp_path):
    """A FIFO nobody writes blocks its reader forever, as a hung network mount does."""
    raw_tar(tmp_path / "good.tar", [encode_sample(plane_sample(f"k-{i}")) for i in range(3)])
    os.mkfifo(tmp_path / "stalled.tar")
    source = SourceConfig("s", [str(tmp_path / "stalled.tar"), str(tmp_path / "good.tar")])
    stream = ValStream([source], EvalTransform(SIZE), batch_size=1, max_bad_fraction=0.5, read_timeout=1.0)
    started = time.monotonic()
    batches = list(stream)
    assert time.monotonic() - started < 30
    assert sorted(keys_of(batches)) == ["k-0", "k-1", "k-2"]
    assert sum(int(b["bad_records"][0]) for b in batches) == 1


def test_the_read_timeout_is_a_data_setting(tmp_path):
    source = SourceConfig("s", [str(tmp_path / "x.tar")])
    (tmp_path / "x.tar").touch()
    dm = DepthDataModule(val_sources=[source], image_size=SIZE, num_workers=0, shard_read_timeout=2.5)
    dm.setup("validate")
    assert dm.val_stream.read_timeout == 2.5


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_damaged_validation_shard_counts_every_sample_it_lost(tmp_path, capsys, damage):
    """One of three shards of 10 samples damaged: up to a third of the set, which must fail the 5 % guard
    (counted as one bad record, it passed it: 1 of 21). A shard deleted before the run is refused by its index."""
    with ShardWriter(tmp_path, "v", max_samples=10) as writer:
        for i in range(30):
            writer.write(plane_sample(f"v-{i}"))
    shard = tmp_path / json.loads(writer.index_path.read_text())["shards"][1]["name"]
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2] if damage == "truncated" else b"")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"logger": False, "accelerator": "cpu", "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path)},
        "model": {"preset": "tiny", "network": {"vit_img_size": 128}, "boundary_metrics": False,
                  "log_images_every_n_val_steps": 0},
        "data": {"image_size": 512, "num_workers": 0, "val_sources": [{"name": "v", "urls": str(writer.index_path)}]}}))
    assert main(["validate", "--recipe", str(recipe)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert len(errors) == 1 and errors[0].startswith("error: source 'v': "), errors
    bad, seen = map(int, errors[0].split(": ")[2].split(" records failed")[0].split(" of "))
    assert seen == 30 and bad >= 5 and f"last: shard {shard}: " in errors[0] and "; its index lists 10" in errors[0]


def test_a_shard_lost_after_its_index_was_read_counts_the_samples_it_held(tmp_path):
    """A shard that disappears mid-run (a network mount gone) weighs what its index says it held."""
    raw_tar(tmp_path / "a.tar", [encode_sample(plane_sample(f"k-{i}")) for i in range(3)])
    health = SourceHealth("s", max_bad_fraction=1.0, min_records=50)
    sizes = {str(tmp_path / "a.tar"): 3, str(tmp_path / "gone.tar"): 40}
    records = list(raw_records(list(sizes), 2, 1, health, sizes))  # this reader keeps every 2nd sample from 1
    assert [r["__key__"] for r in records] == ["k-1"]
    assert (health.bad, health.seen) == (20, 20)
    assert health.last_reason.startswith(f"shard {tmp_path / 'gone.tar'}: FileNotFoundError: No such file")
