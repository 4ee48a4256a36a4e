"""`python -m dp_train synth`: procedural scenes -> shards, deterministic per seed; bad options refused in one
`error:` line before any rendering; tools/synth_scenes.py is its wrapper (same bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dp_train.shards import decode_sample, shard_urls
from dp_train.synth.command import main as synth
from tests.helpers.cli import one_error_line, run_dp_train, run_tool


def argv(out: Path, *extra: str) -> list[str]:
    """Two 32 px scenes in PNG, no progress bar."""
    return ["--out", str(out), "--count", "2", "--size", "32", "--image-format", "png", "--quiet", *extra]


def shard_bytes(out: Path) -> dict[str, bytes]:
    """{file name: bytes} of the shards written to `out`."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_python_m_dp_train_synth_and_its_wrapper_write_the_same_scenes(tmp_path):
    done = run_dp_train("synth", *argv(tmp_path / "sub", "--seed", "7"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 2 scenes" in done.stdout
    wrapped = run_tool("synth_scenes.py", *argv(tmp_path / "tool", "--seed", "7"), cwd=tmp_path)
    assert wrapped.returncode == 0, wrapped.stderr[-3000:]
    assert shard_bytes(tmp_path / "sub") and shard_bytes(tmp_path / "sub") == shard_bytes(tmp_path / "tool")


def test_the_scenes_are_the_seeds_asked_for(tmp_path):
    import webdataset as wds

    assert synth(argv(tmp_path, "--seed", "40", "--prefix", "s")) == 0
    keys = [decode_sample(r).key for r in wds.WebDataset(shard_urls(tmp_path / "s.index.json"), shardshuffle=False)]
    assert len(keys) == 2 and keys[0] != keys[1]


@pytest.mark.parametrize(("extra", "culprit"), [
    (["--sky-prob", "1.5"], "--sky-prob must lie in [0, 1]"),
    (["--samples-per-shard", "0"], "--count and --samples-per-shard must be >= 1"),
])
def test_a_bad_option_value_is_one_error_line_before_any_rendering(tmp_path, capsys, extra, culprit):
    assert synth(argv(tmp_path / "o", *extra)) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {culprit}"
    assert not (tmp_path / "o").exists()


def test_an_existing_set_is_kept_unless_overwrite(tmp_path, capsys):
    assert synth(argv(tmp_path)) == 0
    assert synth(argv(tmp_path)) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {tmp_path / 'synth.index.json'} exists (use --overwrite)"
    assert synth(argv(tmp_path, "--overwrite")) == 0


def test_a_bad_size_is_one_error_line_naming_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        synth(argv(tmp_path, "--size", "4"))
    assert stop.value.code == 2
    assert one_error_line(capsys.readouterr().err).startswith("error: argument --size: size must be N or HxW")
