"""A 2-task SLURM allocation emulated on this machine: `python -m dp_train fit` started once per task with
the SLURM_* variables srun sets; ranks and world size are detected, SIGUSR1 saves at a step boundary and
requeues, and the requeued job continues from that checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from dp_train.data.synth import write_synthetic_shards
from tests.helpers.cli import child_env, dp_train_command

JOB_ID = "774242"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm_shards")
    return write_synthetic_shards(root, "train", 8, size=(64, 64), seed=9, samples_per_shard=4, progress=False)


def recipe(run: Path, shards: Path, max_steps: int, slow: bool, every: int = 1) -> Path:
    """Tiny DDP run on 2 CPU processes; checkpoints every `every` steps, steps slowed down when `slow`."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "every_n_train_steps": every}},
        {"class_path": "tests.helpers.world.RecordWorld", "init_args": {"out_dir": str(run)}},
    ]
    if slow:
        callbacks.append({"class_path": "tests.helpers.slow.SlowSteps", "init_args": {"seconds": 1.0,
                                                                                   "out_dir": str(run)}})
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "ddp", "max_steps": max_steps,
                    "limit_val_batches": 2, "val_check_interval": 1000, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "logger": False,
                    "enable_progress_bar": False, "default_root_dir": str(run), "callbacks": callbacks},
        "model": {"preset": "tiny", "warmup_steps": 1, "log_images_every_n_val_steps": 0,
                  "network": {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}},
        "data": {"train_sources": [{"name": "synth", "urls": str(shards)}], "image_size": 512, "batch_size": 1,
                 "val_sources": [{"name": "synth", "urls": str(shards)}],
                 "samples_per_epoch": 1000, "num_workers": 0, "pin_memory": False},
    }
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fake_scontrol(run: Path) -> Path:
    """A `scontrol` on PATH that records its arguments (there is no SLURM controller here)."""
    bin_dir = run / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {run / 'scontrol.log'}\n")
    script.chmod(0o755)
    return bin_dir


def srun(run: Path, recipe_path: Path, *extra: str) -> list[subprocess.Popen]:
    """Start one `python -m dp_train fit` per task with the variables `srun --ntasks-per-node=2` sets."""
    processes = []
    for rank in range(2):
        env = child_env(**{
            "PATH": f"{fake_scontrol(run)}:{os.environ['PATH']}", "MASTER_PORT": str(29500 + os.getpid() % 1000),
            "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "dp_train", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
            "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost", "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
        })
        log = open(run / f"task{rank}.log", "a")
        processes.append(subprocess.Popen(dp_train_command("fit", recipe_path, *extra), env=env, cwd=run, stdout=log, stderr=log))
    return processes


def wait(processes: list[subprocess.Popen], run: Path) -> None:
    for process in processes:
        assert process.wait(timeout=600) == 0, (run / "task0.log").read_text()[-3000:]


@pytest.mark.slow
def test_two_slurm_tasks_form_one_job_and_train(tmp_path, shards):
    wait(srun(tmp_path, recipe(tmp_path, shards, max_steps=3, slow=False, every=3)), tmp_path)
    worlds = [json.loads((tmp_path / f"world_rank{r}.json").read_text()) for r in range(2)]
    assert [(w["global_rank"], w["local_rank"], w["world_size"]) for w in worlds] == [(0, 0, 2), (1, 1, 2)]
    assert {w["environment"] for w in worlds} == {"SLURMEnvironment"}
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_a_signal_saves_at_a_step_boundary_and_the_restarted_job_resumes(tmp_path, shards, signum):
    """SIGUSR1 (time limit near) also requeues the job; SIGTERM (preemption, scancel) only saves and stops."""
    processes = srun(tmp_path, recipe(tmp_path, shards, max_steps=50, slow=True, every=1000))  # no periodic save
    deadline = time.monotonic() + 300
    while not (tmp_path / "step2").exists():  # let it train a little, then warn as SLURM does before the limit
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), (tmp_path / "task0.log")
        time.sleep(0.2)
    for process in processes:
        process.send_signal(signum)
    wait(processes, tmp_path)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= saved < 50
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]  # no closing validation/save
    assert "resume with --ckpt_path last" in (tmp_path / "task0.log").read_text()
    requeued = (tmp_path / "scontrol.log").read_text().split() if (tmp_path / "scontrol.log").exists() else []
    assert requeued == (["requeue", JOB_ID] if signum == signal.SIGUSR1 else [])  # once, from rank 0

    resumed = recipe(tmp_path, shards, max_steps=saved + 2, slow=False, every=1000)  # same checkpoint settings
    wait(srun(tmp_path, resumed, "--ckpt_path", "last"), tmp_path)
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == saved + 2
