"""A run killed with SIGKILL at any step and restarted with `--ckpt_path last` ends exactly where an
uninterrupted run ends: same samples from the stream, optimizer, schedule, EMA, curriculum and RNG."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from dp_train.cli import main
from dp_train.data.synth import write_synthetic_shards
from dp_train.resume import AtomicCheckpointIO, CheckpointError
from tests.helpers.cli import child_env, dp_train_command

STEPS, SWITCH, EVERY = 12, 5, 3  # total optimizer steps (a multiple of EVERY), curriculum switch, checkpoint interval


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A small synthetic train shard set (two shards, so the workers split them)."""
    root = tmp_path_factory.mktemp("resume_shards")
    return write_synthetic_shards(root, "train", 12, size=(64, 96), seed=3, samples_per_shard=6, progress=False)


def resume_recipe(tmp_path: Path, shards: Path, devices: int, kill_at: int | None) -> Path:
    """Two sources, a mixture and objective switch at SWITCH, EMA, checkpoints every EVERY steps."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "every_n_train_steps": EVERY}},
        {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}},
        {"class_path": "dp_train.curriculum.CurriculumCallback",
         "init_args": {"stages": [
             {"name": "one", "start_step": 0, "mixture": {"a": 1.0, "b": 1.0}, "loss": {"mae": 1.0}},
             {"name": "two", "start_step": SWITCH, "mixture": {"b": 1.0}, "loss": {"mae": 1.0, "mage": 1.0}},
         ]}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "tests.helpers.kill.KillAtStep", "init_args": {"step": kill_at}})
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
            "max_steps": STEPS, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
            "enable_progress_bar": False, "default_root_dir": str(tmp_path), "callbacks": callbacks,
        },
        "model": {"preset": "tiny", "lr_encoder": 1e-3, "lr_decoder": 1e-3, "warmup_steps": 2,
                  "network": {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]},
                  "log_images_every_n_val_steps": 0, "boundary_metrics": False},
        "data": {
            "train_sources": [{"name": "a", "urls": str(shards)}, {"name": "b", "urls": str(shards)}],
            "image_size": 512, "batch_size": 1, "samples_per_epoch": 100 * devices, "num_workers": 2,
            "pin_memory": False, "shuffle_buffer": 4,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def fit(tmp_path: Path, recipe: Path, *extra: str) -> int:
    """`python -m dp_train fit` in its own process group (so a kill takes all its ranks); its exit code."""
    with open(tmp_path / "log.txt", "a") as log:
        return subprocess.run(dp_train_command("fit", recipe, *extra), env=child_env(), cwd=tmp_path, stdout=log,
                              stderr=log, start_new_session=True, timeout=600).returncode


def final_state(tmp_path: Path) -> dict[str, torch.Tensor]:
    """Network weights, EMA weights and optimizer moments of the run's last checkpoint."""
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    state = dict(ckpt["state_dict"])
    for name, value in ckpt["callbacks"].items():
        if "EMAWeightAveraging" in name:
            state |= {f"ema/{k}": v for k, v in value.get("average_model_state", {}).items() if torch.is_tensor(v)}
    for i, moments in ckpt["optimizer_states"][0]["state"].items():
        state |= {f"adam/{i}/{k}": v for k, v in moments.items() if torch.is_tensor(v)}
    return state


def assert_same_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max((x.double() - b[k].double()).abs().max().item() for k, x in a.items())
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by {worst:.3g}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shards) -> dict[int, dict[str, torch.Tensor]]:
    """Final states of uninterrupted runs, by number of processes (computed on first use)."""
    cache: dict[int, dict[str, torch.Tensor]] = {}

    def get(devices: int) -> dict[str, torch.Tensor]:
        if devices not in cache:
            run = tmp_path_factory.mktemp(f"uninterrupted{devices}")
            assert fit(run, resume_recipe(run, shards, devices, kill_at=None)) == 0, (run / "log.txt").read_text()
            cache[devices] = final_state(run)
        return cache[devices]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2], ids=["single", "ddp2"])
@pytest.mark.parametrize("kill_at", [SWITCH - 1, SWITCH + 3], ids=["before_switch", "after_switch"])
def test_sigkilled_run_resumes_exactly(tmp_path, shards, uninterrupted, devices, kill_at):
    recipe = resume_recipe(tmp_path, shards, devices, kill_at=kill_at)
    assert fit(tmp_path, recipe) == -signal.SIGKILL
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)  # intact, plain types
    assert last["global_step"] == kill_at // EVERY * EVERY
    assert fit(tmp_path, resume_recipe(tmp_path, shards, devices, kill_at=None), "--ckpt_path", "last") == 0, (
        (tmp_path / "log.txt").read_text())
    assert_same_states(final_state(tmp_path), uninterrupted(devices))


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
