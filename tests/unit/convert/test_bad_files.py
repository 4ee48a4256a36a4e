"""Bad files and changed data: a focal CSV whose first row is a misspelt number, metric depth converted without a
focal length, a resume after sources were added or removed, and a validation sample held by two shards."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from dp_train.convert.errors import ConvertError
from dp_train.convert.make_shards import main as make_shards
from dp_train.convert.readers import read_focal_file
from dp_train.shards import encode_sample
from dp_train.data.sources import SourceConfig
from tests.helpers.kill_and_resume import resume_shards  # noqa: F401 - the fixture `shards`
from tests.helpers.plane_samples import datamodule, plane_sample, raw_tar
from tests.helpers.resumed_datamodules import mid_epoch_checkpoint, resumed_datamodule


@pytest.mark.parametrize(("text", "reason"), [
    ("a,abc\nb,12\n", "row 1, column 2 (f_px of 'a') is not a number: 'abc'"),
    ("\nstem,f_px\na,10\nb,1O\n", "row 4, column 2 (f_px of 'b') is not a number: '1O'"),
    ("a,10\nb\n", "row 2: every CSV row needs two columns: stem,f_px"),
])
def test_a_bad_focal_csv_row_is_named_by_file_row_and_column(tmp_path, text, reason):
    path = tmp_path / "focal.csv"
    path.write_text(text)
    with pytest.raises(ConvertError) as refused:
        read_focal_file(path)
    assert str(refused.value) == f"cannot read focal file {path}: {reason}"


@pytest.mark.parametrize("header", ["stem,f_px", "image,Focal_Length", "name, fx"])
def test_a_focal_csv_header_is_recognised_by_its_column_name(tmp_path, header):
    path = tmp_path / "focal.csv"
    path.write_text(f"{header}\na,10\nb,12.5\n")
    assert read_focal_file(path) == {"a": 10.0, "b": 12.5}


@pytest.mark.parametrize("units", ["m", "cm", "mm"])
def test_metric_depth_without_a_focal_length_is_refused_before_writing(tmp_path, capsys, units):
    for folder in ("rgb", "depth"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb" / "a.png")
    np.save(tmp_path / "depth" / "a.npy", np.ones((8, 8)))
    out = tmp_path / "out"
    assert make_shards(["--images", str(tmp_path / "rgb"), "--depth", str(tmp_path / "depth"), "--out", str(out),
                        "--dataset", "d", "--units", units]) == 2
    assert capsys.readouterr().err == (f"error: --units {units} is metric depth, which training uses only with a focal "
                                       "length: give --f-px or --focal-file\n")
    assert not out.exists()


def resume_warnings(caplog, dm) -> list[str]:
    """The warnings of starting `dm`'s training loader."""
    with caplog.at_level(logging.WARNING, logger="dp_train.data.stream_position"):
        next(iter(dm.train_dataloader()))
    return [record.getMessage() for record in caplog.records]


@pytest.mark.parametrize(("before", "now", "change"), [
    ("a", "ab", "added 'b'"), ("a", "c", "added 'c', removed 'a'"), ("ab", "b", "removed 'a'"),
])
def test_a_resume_after_sources_were_added_or_removed_names_them_and_draws_the_epoch_anew(shards, caplog, before,
                                                                                            now, change):
    """Not an error: the weights and optimizer do not depend on the data, so a run may go on with other sets;
    only the stream position cannot be kept."""
    checkpoint = mid_epoch_checkpoint(shards, train_sources=[SourceConfig(name, str(shards)) for name in before])
    sources = [SourceConfig(name, str(shards)) for name in now]
    dm = resumed_datamodule(shards, epoch=0, done=2, checkpoint=checkpoint, train_sources=sources)
    assert resume_warnings(caplog, dm) == [f"resuming mid-epoch with data.train_sources {change}: the rest of epoch 0 "
                                           "is drawn anew, not continued exactly (some of its samples may repeat)"]
    assert dm.train_stream.resume_records == {}


def test_a_checkpoint_without_recorded_settings_from_fewer_sources_is_drawn_anew(shards, caplog):
    checkpoint = mid_epoch_checkpoint(shards)
    del checkpoint["train_settings"]  # written before the settings were recorded
    sources = [SourceConfig("a", str(shards)), SourceConfig("b", str(shards))]
    dm = resumed_datamodule(shards, epoch=0, done=2, checkpoint=checkpoint, train_sources=sources)
    assert [line.split(":")[0] for line in resume_warnings(caplog, dm)] == [
        "resuming mid-epoch with 2 data.train_sources (checkpoint"]


def test_a_validation_sample_in_two_shards_read_by_two_workers_is_scored_once(tmp_path):
    records = {key: encode_sample(plane_sample(key)) for key in ("k-0", "k-1", "k-2")}
    raw_tar(tmp_path / "a.tar", [records["k-0"], records["k-1"]])
    raw_tar(tmp_path / "b.tar", [records["k-1"], records["k-2"]])  # the other worker's shard
    source = SourceConfig("v", [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")])
    dm = datamodule(val=[source], batch_size=1, num_workers=2, max_bad_fraction=0.5)
    dm.setup("validate")
    loader = dm.val_dataloader()
    for _ in range(2):  # every pass starts afresh
        batches = [dm.on_before_batch_transfer(batch, 0) for batch in loader]
        scored = [key for batch in batches for key, pad in zip(batch["key"], batch["padding"].tolist()) if not pad]
        assert sorted(scored) == ["k-0", "k-1", "k-2"]
        assert sum(int(batch["bad_records"][0]) for batch in batches) == 1
