"""A run killed with SIGKILL at any moment and restarted with `--ckpt_path last` ends exactly where an
uninterrupted run ends: same samples from the stream, optimizer, schedule, EMA, curriculum and RNG (the 2-process
run fine-tunes with LoRA and frozen heads, so LoRA's factors, their optimizer state and the merge on export are held
to the same bar). A rank killed alone takes every process of its run with it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dp_train.cli.main import main
from dp_train.data.sources import SourceConfig
from dp_train.model import load_weights
from dp_train.runtime.checkpoint_io import AtomicCheckpointIO, CheckpointError
from dp_train.train.module import build_network
from tests.helpers.kill_and_resume import (  # noqa: F401 - resume_shards: the fixture `shards`
    EPOCH,
    assert_same_states,
    final_state,
    kill_when,
    resume_recipe,
    resume_shards,
    start_fit,
    step_done,
    wait_for,
)
from tests.helpers.resumed_datamodules import mid_epoch_checkpoint, resumed_datamodule


def saving(run: Path, step: int) -> Callable[[], bool]:
    """The moment a checkpoint is being written after step `step`, or step `step` + 1 ends (when the
    write was too quick to be seen)."""
    def moment() -> bool:
        writing = any((run / "ckpt").glob(".last.ckpt.*.tmp"))
        return (writing and step_done(run, step)()) or step_done(run, step + 1)()

    return moment


KILLS: list[tuple[str, Callable[[Path, int], Callable[[], bool]], int, set[int]]] = [
    ("right after the epoch-end checkpoint two steps before the switch, workers prefetching", step_done, 5, {4}),
    ("while writing the mid-epoch checkpoint after the switch", saving, 10, {8, 10}),
]
"""The kills of one run: when, the moment (from `run` and a step), and the checkpoint steps it may resume from."""


LORA = {"lora": {"rank": 4, "alpha": 8.0, "encoders": ["patch_encoder", "image_encoder"], "lr": 1e-3},
        "freeze": ["heads"]}
"""The 2-process run's fine-tuning: LoRA factors in both encoders, heads frozen, the decoder trained in full."""

MODEL_BY_DEVICES: dict[int, dict[str, Any] | None] = {1: None, 2: LORA}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shards) -> Callable[[int], dict[str, Any]]:
    """Final states of uninterrupted runs, by number of processes (computed on first use)."""
    cache: dict[int, dict[str, Any]] = {}

    def get(devices: int) -> dict[str, Any]:
        if devices not in cache:
            run = tmp_path_factory.mktemp(f"uninterrupted{devices}")
            recipe = resume_recipe(run, shards, devices, MODEL_BY_DEVICES[devices])
            assert start_fit(run, recipe).wait(timeout=600) == 0, (run / "log.txt").read_text()[-3000:]
            cache[devices] = final_state(run)
        return cache[devices]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2], ids=["single", "ddp2_lora"])
def test_a_run_killed_at_any_moment_resumes_exactly(tmp_path, shards, uninterrupted, devices):
    """Killed from outside twice (after the epoch-end checkpoint before the switch; while saving after it, so
    resumed from the epoch-end or the mid-epoch checkpoint after it), resumed each time with `--ckpt_path last`:
    the end state is the uninterrupted run's. The LoRA run's last checkpoint exports with the factors merged into
    a file that loads strictly into Apple's layout."""
    recipe = resume_recipe(tmp_path, shards, devices, MODEL_BY_DEVICES[devices])
    process, history = start_fit(tmp_path, recipe), []
    for when, moment, step, resumes_from in KILLS:
        saved = kill_when(tmp_path, process, moment(tmp_path, step))
        assert saved in resumes_from, f"killed {when}: last.ckpt is from step {saved}"
        history.append(f"killed {when}, resumed from step {saved}")
        process = start_fit(tmp_path, recipe, "--ckpt_path", "last")
    assert process.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    assert_same_states(final_state(tmp_path), uninterrupted(devices), "; ".join(history))
    if MODEL_BY_DEVICES[devices] is LORA:
        assert "trainable parameters:" in (tmp_path / "log.txt").read_text()
        out = tmp_path / "merged.pt"
        assert main(["export", "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"), "--out", str(out)]) == 0
        network = {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}
        load_weights(build_network("tiny", network), out, strict=True)


def session_processes(session: int) -> dict[int, str]:
    """pid -> command line of every live (not zombie) process of `session`: a run started in a session of its
    own keeps all its processes there, its ranks and their dataloader workers, fork servers and resource
    trackers, also once they are orphaned and adopted by init."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _, _, sid = stat.read_text().rpartition(")")[2].split()[:4]
            if int(sid) == session and state != "Z":
                command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found[int(stat.parent.name)] = command.decode(errors="replace")
    return found


def rank_process(launcher: int, rank: int) -> int:
    """The pid of the process Lightning started for local rank `rank` (> 0) of the run whose rank 0 is `launcher`."""
    for pid in session_processes(launcher):
        with contextlib.suppress(OSError):
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if parent == launcher and f"LOCAL_RANK={rank}".encode() in environment:
                return pid
    raise AssertionError(f"no process for rank {rank} among {session_processes(launcher)}")


def survivors(session: int, seconds: float) -> dict[int, str]:
    """The processes of `session` still alive after waiting up to `seconds` for all of them to end."""
    deadline = time.monotonic() + seconds
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.slow
def test_a_killed_rank_leaves_no_process_of_the_run_behind(tmp_path, shards):
    """SIGKILL of rank 1 alone while a 2-process DDP run trains (2 dataloader workers per rank, started by each
    rank's fork server): within 20 s no process of the run is left, neither rank 0 nor rank 1's workers, fork
    server or resource tracker. Orphaned, those would keep their memory (~1 GB a rank on a real run) and the
    job's output open (Slurm then waits for them before it ends the job)."""
    process = start_fit(tmp_path, resume_recipe(tmp_path, shards, devices=2))
    try:
        wait_for(tmp_path, process, step_done(tmp_path, 1))
        os.kill(rank_process(process.pid, rank=1), signal.SIGKILL)
        process.wait(timeout=60)
        assert survivors(process.pid, seconds=20) == {}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever a failure leaves


def test_a_resume_after_an_epochs_last_batch_starts_the_next_epoch(shards):
    """Lightning still reports the finished epoch when it creates the iterator of a run resumed from the
    checkpoint of an epoch's last batch: the stream must start the next epoch, as the uninterrupted run does."""
    first = next(iter(resumed_datamodule(shards, epoch=0, done=EPOCH).train_dataloader()))
    expected = next(iter(resumed_datamodule(shards, epoch=1, done=0).train_dataloader()))
    assert (first["key"], int(first["batch_index"])) == (expected["key"], 0)


def test_a_resume_after_an_epoch_was_closed_lets_lightning_start_the_next_one(shards):
    """From a checkpoint saved at an epoch's end (`on_train_epoch_end`) Lightning first asks the finished epoch's
    iterator for more, then starts the next epoch with a new one: the first must be empty (a batch from it
    would be trained twice)."""
    assert list(resumed_datamodule(shards, epoch=0, done=EPOCH, closed=True).train_dataloader()) == []


@pytest.mark.parametrize(("before", "done", "message"), [
    ({"batch_size": 2}, 2, "data.batch_size 1 (checkpoint: 2)"),
    ({"num_workers": 2}, 2, "data.num_workers 0 (checkpoint: 2)"),
    ({"samples_per_epoch": 8, "seed": 5}, 2, "data.samples_per_epoch 4 (checkpoint: 8); data.seed 0 (checkpoint: 5)"),
    ({}, 2, None),  # same settings: continued exactly, silently
    ({"batch_size": 2}, 0, None),  # at an epoch start there is no position to lose
])
def test_a_resume_says_in_one_line_when_the_stream_cannot_continue_exactly(shards, caplog, before, done, message):
    checkpoint = mid_epoch_checkpoint(shards, **before)
    with caplog.at_level(logging.WARNING, logger="dp_train.data.stream_position"):
        dm = resumed_datamodule(shards, epoch=0, done=done, checkpoint=checkpoint)
        dm.train_dataloader().__iter__()
    lines = [record.getMessage() for record in caplog.records]
    if message is None:
        assert lines == []
        assert dm.train_stream.resume_records == ({0: [2]} if done else {})
    else:
        assert len(lines) == 1 and "\n" not in lines[0]
        assert lines[0] == (f"resuming mid-epoch with {message}: the rest of epoch 0 is drawn anew, not continued "
                            "exactly (some of its samples may repeat)")
        assert dm.train_stream.resume_records == {}


@pytest.mark.parametrize(("change", "message"), [("copied", None), ("reweighted", "data.train_sources changed 'a'")])
def test_shards_count_by_file_name_and_sources_by_weight(shards, tmp_path, caplog, change, message):
    """Shards copied to another folder (node-local scratch) continue exactly; a changed weight is named."""
    source = (SourceConfig("a", str(shutil.copytree(shards.parent, tmp_path / "scratch") / shards.name))
              if change == "copied" else SourceConfig("a", str(shards), weight=2.0))
    with caplog.at_level(logging.WARNING, logger="dp_train.data.stream_position"):
        checkpoint = mid_epoch_checkpoint(shards)
        dm = resumed_datamodule(shards, epoch=0, done=2, checkpoint=checkpoint, train_sources=[source])
        dm.train_dataloader().__iter__()
    assert [message in r.getMessage() for r in caplog.records] == ([] if message is None else [True])


def test_a_checkpoint_from_another_number_of_processes_is_refused_in_one_line(shards):
    checkpoint = mid_epoch_checkpoint(shards)
    checkpoint["train_position"] *= 2
    with pytest.raises(CheckpointError, match=r"^the checkpoint's data-stream position comes from 2 rank\(s\), "
                                              r"this run has 1: resume with the same number of processes"):
        resumed_datamodule(shards, epoch=0, done=2, checkpoint=checkpoint)


def test_a_kill_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_truncated_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "state_dict": {"w": torch.ones(1000)}}, good)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(good.read_bytes()[:-2000])
    with pytest.raises(CheckpointError, match="broken.ckpt: not a readable checkpoint"):
        AtomicCheckpointIO().load_checkpoint(broken)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": {"logger": False, "max_steps": 1},
                                      "model": {"preset": "tiny"},
                                      "data": {"train_sources": [{"name": "x", "urls": "missing.tar"}]}}))
    assert main(["fit", "--recipe", str(recipe), "--ckpt_path", str(broken)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "broken.ckpt" in err[-1]


@pytest.mark.parametrize(("content", "expected"), [
    ({"head.weight": torch.ones(2)}, "weights.pt: network weights, not a training checkpoint: pass them as --weights"),
    (b"not a checkpoint", "weights.pt: not a torch checkpoint file (or it holds more than tensors and plain data)"),
])
def test_a_file_that_is_no_training_checkpoint_is_refused_in_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)  # e.g. Apple's depth_pro.pt: a plain state dict
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": {"logger": False}, "model": {"preset": "tiny"}}))
    assert main(["validate", "--recipe", str(recipe), "--ckpt_path", str(path)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {tmp_path / expected}"
