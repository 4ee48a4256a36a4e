"""dp_train under a real SLURM scheduler: the project's sbatch template on the local one-node cluster
(tools/slurm/local_cluster.sh) runs 2-task DDP; `scancel -s USR1` and a `--time` limit with `--signal` save,
requeue the job and resume it to the weights of an uninterrupted job, wherever the signal lands; `scancel`
saves and stops. Without a cluster (not root, no apt) these tests are skipped, saying why.

Also, on any machine: dataloader workers and their fork server survive the signals SLURM sends to every
process of a job step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from dp_train.synth import write_synthetic_shards
from tests.helpers.cli import REPO, child_env
from tests.helpers.slurm import (cluster_problem, command, job_fields, release_requeued, sbatch, wait_for_file,
                                 wait_for_job)

TEMPLATE = REPO / "tools" / "slurm" / "train_1node_8gpu.sbatch"
MAX_STEPS = 12
CPU_ALLOCATION = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=4G"]
"""The template's GPU allocation replaced on the command line (later options win over #SBATCH lines)."""
TEMPLATE_SETTINGS = {"DP_GPUS_PER_NODE": "2", "DP_ACCELERATOR": "cpu", "DP_PRECISION": "32-true", "DP_VENV": ""}
"""The template's variables for a CPU node (environment: sbatch hands it to the job)."""
SUBMITTED: list[str] = []

SHIELD_CHILD = textwrap.dedent("""
    import functools, os, signal, sys, time
    from dp_train.data.loader import EpochLoader, init_worker, worker_context
    from tests.helpers.slow_data import SlowItems

    received = []
    for signum in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(signum, lambda s, f: received.append(s))
    loader = EpochLoader(SlowItems(), num_workers=2, multiprocessing_context=worker_context(sys.argv[1] or None),
                         worker_init_fn=functools.partial(init_worker, owner=os.getpid()))
    count = 0
    for item in loader:
        count += 1
        if count == 1:
            print("first batch", flush=True)
            time.sleep(1.5)  # the test signals every process of this session now
    print(f"{count} items, {len(received)} signals", flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["", "forkserver"], ids=["fork", "forkserver"])
def test_dataloader_workers_survive_the_signals_slurm_sends_to_every_process(start_method):
    """SLURM signals the whole job step: workers, their fork server and the resource tracker must live on
    (they would die of SIGUSR1/SIGTERM and take the rank down: "DataLoader worker exited unexpectedly")."""
    child = subprocess.Popen([sys.executable, "-c", SHIELD_CHILD, start_method], env=child_env(), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout.readline().strip() == "first batch", child.stderr.read()
    for signum in (signal.SIGUSR1, signal.SIGTERM):  # like the scheduler: to every process of the group
        os.killpg(child.pid, signum)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err[-2000:]
    assert out.strip() == "8 items, 2 signals"  # 2 workers x 4 items; the main process got both signals
    assert "Traceback" not in err and "resource_tracker" not in err, err


ABANDONED_LOADER_CHILD = textwrap.dedent("""
    import functools, os, sys
    from dp_train.data.loader import EpochLoader, init_worker, worker_context
    from tests.helpers.slow_data import SlowItems

    loader = EpochLoader(SlowItems(count=100), num_workers=2, multiprocessing_context=worker_context(sys.argv[1] or None),
                         worker_init_fn=functools.partial(init_worker, owner=os.getpid()))
    batches = iter(loader)
    next(batches)  # left unfinished: at exit multiprocessing stops the workers with SIGTERM
    print("exiting", flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["", "forkserver"], ids=["fork", "forkserver"])
def test_a_process_exits_while_its_workers_still_run(start_method):
    """Workers ignore the scheduler's SIGTERM but not their owner's: a process that exits with a loader
    unfinished ends (multiprocessing terminates the workers, then waits for them)."""
    done = subprocess.run([sys.executable, "-c", ABANDONED_LOADER_CHILD, start_method], env=child_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "exiting", done.stderr[-2000:]


# ----- the real scheduler -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """The local cluster, started if needed (root); the tests are skipped when there is none. Jobs the tests
    leave behind (a failed assertion) are cancelled at the end."""
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)
    yield
    for job in SUBMITTED:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm_shards")
    # 32 samples: each rank's 12 steps stay within its half of one pass, so any repeat is a wrong split
    return write_synthetic_shards(root, "train", 32, size=(64, 64), seed=9, samples_per_shard=4, progress=False)


def recipe(run: Path, shards: Path, pause: dict | None = None, wandb: bool = False) -> Path:
    """A tiny 2-rank CPU run with one dataloader worker per rank, a checkpoint every 4 steps and a validation
    every 6; `pause` holds the first run in a phase until it is signalled (tests.helpers.pause.PauseIn);
    `wandb` logs to an offline wandb run (its service process runs beside rank 0)."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0, "every_n_train_steps": 4}},
        {"class_path": "tests.helpers.world.RecordWorld", "init_args": {"out_dir": str(run)}},
        {"class_path": "tests.helpers.record.RecordKeys", "init_args": {"out_dir": str(run)}},
    ]
    if pause:
        callbacks.append({"class_path": "tests.helpers.pause.PauseIn", "init_args": pause | {"out_dir": str(run)}})
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": MAX_STEPS, "limit_val_batches": 2, "val_check_interval": 6,
                    "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "logger": wandb and {
                        "class_path": "lightning.pytorch.loggers.WandbLogger",
                        "init_args": {"project": "dp_train", "save_dir": str(run), "offline": True}},
                    "enable_progress_bar": False, "default_root_dir": str(run), "callbacks": callbacks},
        "model": {"preset": "tiny", "warmup_steps": 1, "log_images_every_n_val_steps": 0,
                  "network": {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}},
        "data": {"train_sources": [{"name": "synth", "urls": str(shards)}], "image_size": 512, "batch_size": 1,
                 "val_sources": [{"name": "synth", "urls": str(shards)}],
                 "samples_per_epoch": 1000, "num_workers": 1, "pin_memory": False},
    }
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def submit(run: Path, recipe_path: Path, *sbatch_options: str, wandb: bool = False) -> str:
    """sbatch the project's 1-node template, CPU variant, from `run`; returns the job id."""
    env = child_env(**TEMPLATE_SETTINGS, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                    WANDB_MODE="offline" if wandb else "disabled")
    options = [*CPU_ALLOCATION, f"--output={run / 'job.out'}", *sbatch_options]
    job = sbatch(TEMPLATE, ["--recipe", str(recipe_path)], options, env, cwd=run)
    SUBMITTED.append(job)
    return job


def finished(job: str, run: Path, timeout: float = 300) -> str:
    """Wait for the job to complete successfully; returns its log."""
    fields = wait_for_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}, timeout)
    log = (run / "job.out").read_text()
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", log[-4000:]
    return log


def weights(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == MAX_STEPS
    return checkpoint["state_dict"]


def assert_same_weights(run: Path, reference: Path) -> None:
    ours, theirs = weights(run), weights(reference)
    assert ours.keys() == theirs.keys()
    worst = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours)
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted job's by {worst:.3g}"


def assert_clean(log: str) -> None:
    """No process of the job died or printed a traceback (workers, fork server, resource tracker, ranks)."""
    for bad in ("Traceback", "exited unexpectedly", "resource_tracker", "Connection reset", "wandb: ERROR"):
        assert bad not in log, f"{bad!r} in the job log:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def uninterrupted(cluster, shards, tmp_path_factory) -> Path:
    """The reference: the same job, never signalled."""
    run = tmp_path_factory.mktemp("uninterrupted")
    log = finished(submit(run, recipe(run, shards)), run)
    assert_clean(log)
    return run


@pytest.mark.slow
def test_the_template_runs_two_srun_tasks_as_one_ddp_job(uninterrupted):
    run = uninterrupted
    worlds = [yaml.safe_load((run / f"world_rank{r}.json").read_text()) for r in range(2)]
    assert [(w["global_rank"], w["local_rank"], w["world_size"]) for w in worlds] == [(0, 0, 2), (1, 1, 2)]
    assert {w["environment"] for w in worlds} == {"SLURMEnvironment"}
    keys = [(run / f"keys_rank{r}.txt").read_text().split() for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == MAX_STEPS and not set(keys[0]) & set(keys[1])  # distinct samples
    assert (run / "ckpt" / "last.ckpt").is_file()


def preempted_and_resumed(run: Path, job: str) -> str:
    """After the job saved on SIGUSR1 and requeued itself: let it start again and finish; returns the log."""
    release_requeued(job)
    log = finished(job, run)
    assert log.count("restart 0 on") == 1 and log.count("restart 1 on") == 1  # one log, appended
    assert "stopped by SIGUSR1 after saving" in log and "resume with --ckpt_path last" in log
    return log


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "wandb"), [("step", True), ("validation", False)],
                         ids=["mid-step, wandb", "during validation"])
def test_scancel_usr1_saves_requeues_and_resumes_to_the_uninterrupted_weights(tmp_path, shards, uninterrupted, phase,
                                                                              wandb):
    """`scancel -s USR1` (what --signal sends before the time limit) mid-step or during validation, with
    dataloader workers (and wandb's service) running: every rank saves, rank 0 requeues, the requeued job
    resumes from last.ckpt."""
    pause = {"phase": phase, "after_step": 5}
    job = submit(tmp_path, recipe(tmp_path, shards, pause=pause, wandb=wandb), wandb=wandb)
    wait_for_file(tmp_path / f"paused_in_{phase}", job, timeout=300)  # after the step-4 checkpoint
    command("scancel", "--signal=USR1", job)
    log = preempted_and_resumed(tmp_path, job)
    assert_clean(log)
    assert_same_weights(tmp_path, uninterrupted)


@pytest.mark.slow
def test_the_time_limit_signal_saves_requeues_and_resumes(tmp_path, shards, uninterrupted):
    """`--time=3 --signal=USR1@90`: SLURM itself signals the job 90 s before its limit (its timer may send it
    up to a minute earlier); the first run waits in its first step until the signal comes."""
    job = submit(tmp_path, recipe(tmp_path, shards, pause={"phase": "step"}), "--time=3", "--signal=USR1@90")
    log = preempted_and_resumed(tmp_path, job)
    assert_clean(log)
    assert_same_weights(tmp_path, uninterrupted)


@pytest.mark.slow
def test_scancel_saves_and_stops_without_requeue(tmp_path, cluster, shards):
    """Plain `scancel`: SIGTERM to every process; the ranks save at the step boundary and exit cleanly."""
    job = submit(tmp_path, recipe(tmp_path, shards, pause={"phase": "step", "after_step": 5}))
    wait_for_file(tmp_path / "paused_in_step", job, timeout=300)
    command("scancel", job)
    fields = wait_for_job(job, {"CANCELLED"}, timeout=120)
    assert fields["Restarts"] == "0"
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"]
    assert 5 < saved < MAX_STEPS  # the step the signal landed in, not the step-4 periodic checkpoint
    log = (tmp_path / "job.out").read_text()
    assert log.count("stopped by SIGTERM after saving") == 2, log[-4000:]  # both ranks
    assert_clean(log)
    assert job_fields(job)["JobState"] == "CANCELLED"
