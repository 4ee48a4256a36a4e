"""Bad inputs (recipe values, checkpoint files, sources) are one `error:` line naming the culprit, never a traceback."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from dp_train.cli.main import main
from dp_train.runtime.checkpoint_io import AtomicCheckpointIO, CheckpointError
from tests.helpers.checkpoints import Payload


@pytest.mark.parametrize("content", ["trainer:\n  max_steps: 10\n", "hello, I am not a checkpoint\n", ""])
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_text_or_yaml_file_as_ckpt_path_is_one_error_line(tmp_path, capsys, content, command):
    path = tmp_path / "last.ckpt.yaml"
    path.write_text(content)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": {"logger": False}, "model": {"preset": "tiny"}}))
    assert main([command, "--recipe", str(recipe), "--ckpt_path", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {path}: ") and "Traceback" not in "\n".join(err), err[-5:]


def test_a_checkpoint_file_never_runs_pickled_code_even_when_torch_is_told_to(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "callbacks": Payload(tmp_path / "MARKER")}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's switch back to plain pickle
    with pytest.raises(CheckpointError, match=f"{path}: not a torch checkpoint file .or it holds more than tensors"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not (tmp_path / "MARKER").exists()


SOURCE = {"name": "s", "urls": "s-000.tar"}


@pytest.mark.parametrize(("override", "culprit"), [
    ("--data.batch_size=0", "data.batch_size=0: must be >= 1"),
    ("--data.batch_size=-2", "data.batch_size=-2: must be >= 1"),
    ("--data.val_batch_size=-1", "data.val_batch_size=-1: must be >= 1"),
    ("--data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
    ("--data.samples_per_epoch=0", "data.samples_per_epoch=0: must be >= 1"),
    ("--data.shuffle_buffer=0", "data.shuffle_buffer=0: must be >= 1"),
    ("--data.max_bad_fraction=-0.1", "data.max_bad_fraction=-0.1: must be in [0, 1]"),
    ("--data.max_bad_fraction=1.5", "data.max_bad_fraction=1.5: must be in [0, 1]"),
    ("--data.image_size=640", "data.image_size=640 does not fit the network, which takes 512 px "
                              "(4 x model.network.vit_img_size=128)"),
    ("--data.train_sources=[]", "data.train_sources is empty: fit needs at least one training source"),
    (f"--data.train_sources=[{SOURCE}, {SOURCE}]", "data.train_sources: more than one source is named 's'"),
    (f"--data.val_sources=[{SOURCE}, {SOURCE}]", "data.val_sources: more than one source is named 's'"),
    (f"--data.train_sources=[{SOURCE | {'weight': -1}}]", "data.train_sources: source 's' has weight -1.0"),
    (f"--data.train_sources=[{SOURCE | {'weight': 0}}]", "data.train_sources: every source has weight 0"),
    ("--data.val_sources=[{name: v, urls: []}]", "data.val_sources: source 'v' has no shard URLs"),
])
def test_a_recipe_value_that_cannot_work_is_one_error_line_before_any_work(tmp_path, capsys, override, culprit):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"logger": False}, "model": {"preset": "tiny", "network": {"vit_img_size": 128}},
        "data": {"image_size": 512, "train_sources": [SOURCE], "num_workers": 0}}))
    code = main(["fit", "--recipe", str(recipe), override])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert code and len(errors) == 1 and errors[0].startswith(f"error: {culprit}"), errors


def test_a_checkpoint_folder_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "ckpt").write_text("a file")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"logger": False, "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                    "init_args": {"dirpath": str(tmp_path / "ckpt")}}]},
        "model": {"preset": "tiny", "network": {"vit_img_size": 128}},
        "data": {"image_size": 512, "train_sources": [SOURCE]}}))
    assert main(["fit", "--recipe", str(recipe)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: trainer.callbacks: ModelCheckpoint dirpath {tmp_path / 'ckpt'} is a file, not a folder")


def test_a_source_whose_index_lists_no_shards_is_one_error_line_before_any_work(tmp_path, capsys):
    index = tmp_path / "empty.index.json"
    index.write_text(json.dumps({"schema_version": 1, "prefix": "empty", "complete": True, "depth_format": "npy16",
                                 "image_format": "jpg", "samples": 0, "shards": []}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"logger": False}, "model": {"preset": "tiny", "network": {"vit_img_size": 128}},
        "data": {"image_size": 512, "train_sources": [{"name": "empty", "urls": str(index)}]}}))
    assert main(["fit", "--recipe", str(recipe)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: data.train_sources: source 'empty' has no shard URLs")


@pytest.mark.parametrize(("command", "culprit"), [
    ("validate", "data.val_sources is empty: validate needs at least one validation source"),
    ("test", "data.test_sources is empty: test needs at least one test source"),
])
def test_an_evaluation_without_its_sources_is_one_error_line_before_any_work(tmp_path, capsys, command, culprit):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"logger": False}, "model": {"preset": "tiny", "network": {"vit_img_size": 128}},
        "data": {"image_size": 512, "train_sources": [SOURCE], "num_workers": 0}}))
    assert main([command, "--recipe", str(recipe)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert errors == [f"error: {culprit}"]
