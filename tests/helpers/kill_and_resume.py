"""Training runs killed with SIGKILL and resumed with `--ckpt_path last`, as the resume tests drive them: the
shards and recipe of such a run, starting it in its own process group, killing it at a chosen moment, and
comparing its end state with an uninterrupted run's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dp_train.synth import write_synthetic_shards
from tests.helpers.cli import child_env, dp_train_command

STEPS, EVERY, EPOCH, SWITCH = 12, 2, 4, 6
"""Optimizer steps, checkpoint interval, batches per epoch per rank, and the curriculum switch (mixture, loss and
a restarted LR schedule): the checkpoints at steps 4 and 8 are also the last batch of an epoch."""


def write_resume_shards(root: Path) -> Path:
    """A small synthetic train shard set in `root` (two shards, so the workers split them); returns its index."""
    return write_synthetic_shards(root, "train", 12, size=(64, 96), seed=3, samples_per_shard=6, progress=False)


@pytest.fixture(scope="module", name="shards")
def resume_shards(tmp_path_factory) -> Path:
    """The fixture `shards`: one shard set of `write_resume_shards` per test module (import `resume_shards`
    into the module that requests `shards`)."""
    return write_resume_shards(tmp_path_factory.mktemp("resume_shards"))


def resume_recipe(run: Path, shards: Path, devices: int, model: dict | None = None) -> Path:
    """Two sources, a switch of mixture, objective and LR schedule at SWITCH, EMA, checkpoints every EVERY steps,
    EPOCH batches per epoch, 2 dataloader workers; `run/markers/stepN` appears as step N ends. `model` adds
    `model` keys (e.g. `lora`)."""
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
                  "log_images_every_n_val_steps": 0, "boundary_metrics": False} | (model or {}),
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
