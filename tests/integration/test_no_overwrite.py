"""No command replaces a user's file: predict, export and fit keep what is already there unless told otherwise."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from PIL import Image

from dp_train.cli.main import main
from dp_train.synth import write_synthetic_shards
from dp_train.model import DepthProConfig, build_depth_pro, save_weights

TINY = {"preset": "tiny", "network": {"vit_img_size": 128, "decoder_features": 16,
                                      "encoder_feature_dims": [8, 16, 32, 32]}}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Weights of the tiny preset at a 128 px ViT input."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(build_depth_pro(DepthProConfig.preset("tiny", vit_img_size=128)), path)
    return path


def photos(folder: Path, *names: str) -> list[Path]:
    """Small RGB images named `names` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.fromarray(np.full((24, 32, 3), 40 * index, np.uint8)).save(folder / name)
    return [folder / name for name in names]


def predict(weights: Path, source: Path, output: Path, *extra: str) -> int:
    """`dp_train predict` with the tiny network on CPU."""
    return main(["predict", "--weights", str(weights), "--input", str(source), "--output", str(output),
                 "--preset", "tiny", "--vit-img-size", "128", "--device", "cpu", "--f-px", "30", *extra])


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_refuses_to_write_beside_its_input_images(weights, tmp_path, capsys):
    photos(tmp_path / "photos", "b.jpg", "c.jpg")
    before = contents(tmp_path / "photos")
    assert predict(weights, tmp_path / "photos", tmp_path / "photos") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --output {tmp_path / 'photos'} would put outputs beside the input images in {tmp_path / 'photos'}; "
        "choose another folder (or pass --overwrite)"]
    assert contents(tmp_path / "photos") == before
    assert predict(weights, tmp_path / "photos", tmp_path / "photos", "--overwrite") == 0
    assert (tmp_path / "photos" / "b.npy").is_file()


def test_predict_refuses_to_replace_existing_outputs(weights, tmp_path, capsys):
    photo, = photos(tmp_path / "photos", "b.jpg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.npy").write_bytes(b"the user's own array")
    assert predict(weights, photo, out) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --output {out} already holds b.npy: pass --overwrite to replace them, or choose another folder"]
    assert contents(out) == {"b.npy": b"the user's own array"}
    assert predict(weights, photo, out, "--overwrite") == 0
    assert np.load(out / "b.npy").shape == (24, 32)


def test_predict_run_twice_into_one_folder_keeps_the_first_results(weights, tmp_path, capsys):
    photos(tmp_path / "photos", "b.jpg", "c.png")
    assert predict(weights, tmp_path / "photos", tmp_path / "out") == 0
    first = contents(tmp_path / "out")
    assert predict(weights, tmp_path / "photos", tmp_path / "out") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: --output {tmp_path / 'out'} already holds b.npy and 5 more: pass --overwrite")
    assert contents(tmp_path / "out") == first


def test_predict_never_replaces_an_input_image_even_with_overwrite(weights, tmp_path, capsys):
    photos(tmp_path / "photos", "b.png")
    before = contents(tmp_path / "photos")
    assert predict(weights, tmp_path / "photos", tmp_path / "photos", "--overwrite") == 2
    assert "would overwrite an input image" in capsys.readouterr().err
    assert contents(tmp_path / "photos") == before


def test_export_refuses_an_existing_out_unless_overwrite(tmp_path, capsys, weights):
    out = tmp_path / "depth_pro.pt"
    out.write_bytes(b"the downloaded release weights")
    assert main(["export", "--ckpt", str(weights), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {out} exists: pass --overwrite to replace it"]
    assert out.read_bytes() == b"the downloaded release weights"
    assert main(["export", "--ckpt", str(weights), "--out", str(out), "--overwrite"]) == 0
    assert len(torch.load(out, weights_only=True)) == len(load_file(weights))


@pytest.mark.parametrize("spelling", ["same path", "relative path", "symlink", "hard link", "inside a sharded dir"])
def test_export_never_writes_over_its_input_even_with_overwrite(tmp_path, capsys, monkeypatch, spelling):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "last.ckpt"
    if spelling == "inside a sharded dir":
        ckpt.mkdir()
        (ckpt / "__0_0.distcp").write_bytes(b"rank 0's shard")
    else:
        ckpt.write_bytes(b"weights, optimizer state and step")
    monkeypatch.chdir(tmp_path)
    out = {"same path": ckpt, "relative path": Path("run/../run/last.ckpt"), "symlink": run / "w.pt",
           "hard link": run / "w.pt", "inside a sharded dir": ckpt / "w.safetensors"}[spelling]
    if spelling == "symlink":
        out.symlink_to(ckpt)
    elif spelling == "hard link":
        out.hardlink_to(ckpt)
    before = contents(run)
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {out} is, or lies inside, the checkpoint --ckpt {ckpt}: choose another file (the input is "
        "never replaced, even with --overwrite)"]
    assert contents(run) == before


def test_export_into_a_folder_that_is_a_file_is_one_error_line(tmp_path, capsys, weights):
    (tmp_path / "some_file.txt").write_text("the user's notes")
    out = tmp_path / "some_file.txt" / "w.safetensors"
    assert main(["export", "--ckpt", str(weights), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {out} cannot be written: {tmp_path / 'some_file.txt'} is a file, not a folder"]
    assert (tmp_path / "some_file.txt").read_text() == "the user's notes"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A tiny synthetic shard set."""
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), "train", 4, size=(64, 96), seed=5,
                                  samples_per_shard=4, progress=False)


def fit_recipe(tmp_path: Path, shards: Path, steps: int) -> Path:
    """A one- or two-step CPU run of the tiny network whose logs and checkpoints go to `tmp_path`."""
    recipe = tmp_path / f"fit{steps}.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "max_steps": steps, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
        "model": TINY | {"log_images_every_n_val_steps": 0, "boundary_metrics": False},
        "data": {"train_sources": [{"name": "s", "urls": str(shards)}], "image_size": 512, "batch_size": 1,
                 "num_workers": 0, "samples_per_epoch": 4},
    }))
    return recipe


@pytest.mark.slow
def test_fit_into_a_used_run_folder_keeps_the_earlier_config(tmp_path, shards):
    assert main(["fit", "--recipe", str(fit_recipe(tmp_path, shards, 1))]) == 0
    first = (tmp_path / "config.yaml").read_text()
    assert main(["fit", "--recipe", str(fit_recipe(tmp_path, shards, 2)),
                 "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0  # resume into the same folder
    assert (tmp_path / "config.yaml").read_text() == first
    second = (tmp_path / "config-v1.yaml").read_text()
    assert yaml.safe_load(first)["trainer"]["max_steps"] == 1 and yaml.safe_load(second)["trainer"]["max_steps"] == 2
    assert main(["fit", "--recipe", str(fit_recipe(tmp_path, shards, 2)),
                 "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0  # the same command again: nothing new
    assert sorted(p.name for p in tmp_path.glob("config*.yaml")) == ["config-v1.yaml", "config.yaml"]


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as on a full disk."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        """Write `data`, or raise OSError(ENOSPC) when it does not fit."""
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)


@pytest.mark.slow
def test_a_checkpoint_save_on_a_full_disk_is_one_error_line_and_keeps_the_previous_one(tmp_path, shards, capsys,
                                                                                      monkeypatch):
    assert main(["fit", "--recipe", str(fit_recipe(tmp_path, shards, 1))]) == 0
    last = tmp_path / "ckpt" / "last.ckpt"
    before = contents(last.parent)
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *args, **kwargs: real_save(obj, FullDisk(f, 4096), *args,
                                                                                 **kwargs))
    resume = ["fit", "--recipe", str(fit_recipe(tmp_path, shards, 2)), "--ckpt_path", str(last)]
    capsys.readouterr()
    assert main(resume) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot save checkpoint {last.parent}/"), errors
    assert ".ckpt: No space left on device; checkpoints saved before are kept" in errors[0], errors
    assert contents(last.parent) == before  # no partial file left, last.ckpt as it was
    monkeypatch.setattr(torch, "save", real_save)  # room again: the run resumes from the kept checkpoint
    assert main(resume) == 0
    assert torch.load(last, weights_only=True)["global_step"] == 2
