"""A run killed with SIGKILL at any moment and restarted with `--ckpt_path last` ends exactly where an
uninterrupted run ends: same samples from the stream, optimizer, schedule, EMA, curriculum and RNG. A rank
killed alone takes every process of its run with it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from dp_train.cli.main import main
from dp_train.data.datamodule import DepthDataModule
from dp_train.data.sources import SourceConfig
from dp_train.synth import write_synthetic_shards
from dp_train.runtime.checkpoint_io import AtomicCheckpointIO, CheckpointError
from tests.helpers.cli import child_env, dp_train_command

STEPS, EVERY, EPOCH, SWITCH = 12, 2, 4, 6
"""Optimizer steps, checkpoint interval, batches per epoch per rank, and the curriculum switch (mixture, loss and
a restarted LR schedule): the checkpoints at steps 4 and 8 are also the last batch of an epoch."""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A small synthetic train shard set (two shards, so the workers split them)."""
    root = tmp_path_factory.mktemp("resume_shards")
    return write_synthetic_shards(root, "train", 12, size=(64, 96), seed=3, samples_per_shard=6, progress=False)


def resume_recipe(run: Path, shards: Path, devices: int) -> Path:
    """Two sources, a switch of mixture, objective and LR schedule at SWITCH, EMA, checkpoints every EVERY steps,
    EPOCH batches per epoch, 2 dataloader workers; `run/markers/stepN` appears as step N ends."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0, "every_n_train_steps": EVERY}},
        {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}},
        {"class_path": "dp_train.train.curriculum.CurriculumCallback",
         "init_args": {"stages": [
             {"name": "one", "start_step": 0, "mixture": {"a": 1.0, "b": 1.0}, "loss": {"mae": 1.0}},
             {"name": "two", "start_step": SWITCH, "mixture": {"b": 1.0}, "loss": {"mae": 1.0, "mage": 1.0},
              "reset_lr": True},
         ]}},
        {"class_path": "tests.helpers.slow.SlowSteps", "init_args": {"seconds": 0.0, "out_dir": str(run / "markers")}},
    ]
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
            "max_steps": STEPS, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
            "enable_progress_bar": False, "default_root_dir": str(run), "callbacks": callbacks,
        },
        "model": {"preset": "tiny", "lr_encoder": 1e-3, "lr_decoder": 1e-3, "warmup_steps": 2,
                  "network": {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]},
                  "log_images_every_n_val_steps": 0, "boundary_metrics": False},
        "data": {
            "train_sources": [{"name": "a", "urls": str(shards)}, {"name": "b", "urls": str(shards)}],
            "image_size": 512, "batch_size": 1, "samples_per_epoch": EPOCH * devices, "num_workers": 2,
            "pin_memory": False, "shuffle_buffer": 4,
        },
    }
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def start_fit(run: Path, recipe: Path, *extra: str) -> subprocess.Popen:
    """`python -m dp_train fit` in its own process group (so one kill takes all its ranks and workers)."""
    shutil.rmtree(run / "markers", ignore_errors=True)
    (run / "markers").mkdir()
    with open(run / "log.txt", "a") as log:
        return subprocess.Popen(dp_train_command("fit", recipe, *extra), env=child_env(), cwd=run, stdout=log,
                                stderr=log, start_new_session=True)


def wait_for(run: Path, process: subprocess.Popen, moment: Callable[[], bool]) -> None:
    """Return as soon as `moment()` holds (checked every millisecond); the run must still be going."""
    deadline = time.monotonic() + 300
    while not moment():
        assert process.poll() is None and time.monotonic() < deadline, (run / "log.txt").read_text()[-3000:]
        time.sleep(0.001)


def kill_when(run: Path, process: subprocess.Popen, moment: Callable[[], bool]) -> int:
    """SIGKILL the whole process group as soon as `moment()` holds, as a node loss or `kill -9` would; returns
    the step of the `last.ckpt` it leaves behind (which must load)."""
    wait_for(run, process, moment)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    return torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


def step_done(run: Path, step: int) -> Callable[[], bool]:
    """The moment optimizer step `step` has ended (its checkpoint, if any, is written right after)."""
    return lambda: (run / "markers" / f"step{step}").exists()


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


def final_state(run: Path) -> dict[str, Any]:
    """What the run's last checkpoint holds of its training: weights, EMA weights and count, optimizer and LR
    schedule, curriculum and EMA callback states, data-stream position, RNG states, step and epoch."""
    ckpt = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == STEPS
    callbacks = {name: state for name, state in ckpt["callbacks"].items() if not name.startswith("ModelCheckpoint")}
    keys = ("current_model_state", "state_dict", "averaging_state", "optimizer_states", "lr_schedulers",
            "DepthDataModule", "rng_per_rank", "global_step", "epoch")
    return {key: ckpt[key] for key in keys} | {"callbacks": callbacks}


def leaves(tree: Any, path: str = "") -> dict[str, Any]:
    """The leaves of nested dicts, lists and tuples, by path."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in leaves(value, f"{path}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in leaves(value, f"{path}/{i}").items()}
    return {path: tree}


def assert_same_states(resumed: dict[str, Any], uninterrupted: dict[str, Any], history: str) -> None:
    """Tensors equal to 1e-6 (identical arithmetic gives identical bits), everything else equal."""
    a, b = leaves(resumed), leaves(uninterrupted)
    assert a.keys() == b.keys(), f"{history}: {sorted(a.keys() ^ b.keys())[:5]}"
    for path, value in a.items():
        if torch.is_tensor(value):
            worst = (value.double() - b[path].double()).abs().max().item() if value.numel() else 0.0
            assert worst <= 1e-6, f"{history}: {path} differs from the uninterrupted run's by {worst:.3g}"
        else:
            assert value == b[path], f"{history}: {path} is {value!r}, uninterrupted {b[path]!r}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shards) -> Callable[[int], dict[str, Any]]:
    """Final states of uninterrupted runs, by number of processes (computed on first use)."""
    cache: dict[int, dict[str, Any]] = {}

    def get(devices: int) -> dict[str, Any]:
        if devices not in cache:
            run = tmp_path_factory.mktemp(f"uninterrupted{devices}")
            assert start_fit(run, resume_recipe(run, shards, devices)).wait(timeout=600) == 0, (
                (run / "log.txt").read_text()[-3000:])
            cache[devices] = final_state(run)
        return cache[devices]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2], ids=["single", "ddp2"])
def test_a_run_killed_at_any_moment_resumes_exactly(tmp_path, shards, uninterrupted, devices):
    """Killed from outside twice (after the epoch-end checkpoint before the switch; while saving after it, so
    resumed from the epoch-end or the mid-epoch checkpoint after it), resumed each time with `--ckpt_path last`:
    the end state is the uninterrupted run's."""
    recipe = resume_recipe(tmp_path, shards, devices)
    process, history = start_fit(tmp_path, recipe), []
    for when, moment, step, resumes_from in KILLS:
        saved = kill_when(tmp_path, process, moment(tmp_path, step))
        assert saved in resumes_from, f"killed {when}: last.ckpt is from step {saved}"
        history.append(f"killed {when}, resumed from step {saved}")
        process = start_fit(tmp_path, recipe, "--ckpt_path", "last")
    assert process.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    assert_same_states(final_state(tmp_path), uninterrupted(devices), "; ".join(history))


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


def resumed_datamodule(shards: Path, epoch: int, done: int, checkpoint: dict | None = None, closed: bool = False,
                       **settings: Any) -> DepthDataModule:
    """A datamodule of a run resumed from `checkpoint` (its datamodule state), whose trainer is in `epoch` with
    `done` of its batches trained and the epoch `closed` or not (what Lightning reports when it creates the train
    iterator)."""
    dm = DepthDataModule(**({
        "train_sources": [SourceConfig("a", str(shards))], "image_size": 64, "batch_size": 1,
        "samples_per_epoch": EPOCH, "num_workers": 0, "pin_memory": False, "shuffle_buffer": 4} | settings))
    batches = SimpleNamespace(current=SimpleNamespace(ready=done))
    epochs = SimpleNamespace(current=SimpleNamespace(processed=epoch + closed, completed=epoch))
    dm.trainer = SimpleNamespace(current_epoch=epoch, global_rank=0, world_size=1, fit_loop=SimpleNamespace(
        epoch_progress=epochs, epoch_loop=SimpleNamespace(batch_progress=batches)))
    if checkpoint is not None:
        dm.load_state_dict(checkpoint)
    dm.setup("fit")
    return dm


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


def mid_epoch_checkpoint(shards: Path, **settings: Any) -> dict:
    """The datamodule state of a run with `settings` that trained two records of epoch 0."""
    state = resumed_datamodule(shards, epoch=0, done=0, **settings).state_dict()
    state["train_position"][0] |= {"workers": max(1, settings.get("num_workers", 0)), "records": {0: [2]}}
    return state


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
