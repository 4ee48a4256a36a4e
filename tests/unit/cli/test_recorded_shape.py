"""predict and export take the network's shape from what the weights record: a training checkpoint's
hyper-parameters (file or sharded directory), or the header of a .safetensors file that export wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dp_train.cli.main import main
from dp_train.model import DepthProConfig, build_depth_pro, load_weights, save_weights
from dp_train.model.weights import read_weights
from dp_train.runtime.checkpoint_io import checkpoint_hparams
from tests.helpers.checkpoints import Holder, write_sharded

NETWORK = {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}
HPARAMS = {"preset": "tiny", "network": NETWORK | {"grad_checkpointing": True}, "lr_decoder": 1e-3}
SHAPE = {"preset": "tiny", "network": NETWORK}


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """A tiny network of a shape no preset has (as a training recipe's `model.network` makes)."""
    return build_depth_pro(DepthProConfig.preset("tiny", **{k: tuple(v) if isinstance(v, list) else v
                                                           for k, v in NETWORK.items()}))


@pytest.fixture(scope="module")
def last_ckpt(tmp_path_factory, net) -> Path:
    """A Lightning training checkpoint file of `net` with the run's hyper-parameters."""
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    torch.save({"epoch": 0, "global_step": 5, "hyper_parameters": HPARAMS,
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def predict(weights: Path, tmp_path: Path, *extra: str) -> int:
    """`dp_train predict` on one image, on CPU, without saying the network's shape."""
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(tmp_path / "in.jpg")
    return main(["predict", "--weights", str(weights), "--input", str(tmp_path / "in.jpg"), "--output",
                 str(tmp_path / "out"), "--device", "cpu", "--f-px", "30", *extra])


def test_a_training_checkpoint_records_its_shape_without_runtime_fields(last_ckpt, net):
    state, shape = read_weights(last_ckpt)
    assert shape == SHAPE and state.keys() == net.state_dict().keys()


def test_predict_reads_the_shape_from_a_training_checkpoint(last_ckpt, tmp_path):
    assert predict(last_ckpt, tmp_path) == 0
    assert np.load(tmp_path / "out" / "in.npy").shape == (24, 32)


def test_predict_reads_the_shape_from_a_sharded_checkpoint(tmp_path, net):
    holder = Holder(net)
    path = write_sharded(tmp_path / "last.ckpt", holder, torch.optim.AdamW(holder.parameters()),
                         meta={"hyper_parameters": HPARAMS})
    assert checkpoint_hparams(path) == HPARAMS  # what --ckpt_path DIR gives the recipe
    assert predict(path, tmp_path) == 0


def test_an_explicit_preset_still_wins(last_ckpt, tmp_path, capsys):
    assert predict(last_ckpt, tmp_path, "--preset", "small") == 2
    assert "does not fit the model" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_writes_what_loads_into_the_recorded_shape(last_ckpt, tmp_path, net, suffix, capsys):
    out = tmp_path / f"model{suffix}"
    assert main(["export", "--ckpt", str(last_ckpt), "--out", str(out)]) == 0
    assert f"wrote {len(net.state_dict())} tensors to {out} (network {SHAPE})" in capsys.readouterr().out
    load_weights(net, out)  # strict: Apple's layout, nothing added
    assert read_weights(out)[1] == (SHAPE if suffix == ".safetensors" else {})  # a .pt holds tensors only


def test_an_exported_safetensors_predicts_without_flags(last_ckpt, tmp_path):
    out = tmp_path / "model.safetensors"
    assert main(["export", "--ckpt", str(last_ckpt), "--out", str(out)]) == 0
    assert predict(out, tmp_path) == 0


def test_saved_safetensors_record_the_network_shape(tmp_path, net):
    save_weights(net, tmp_path / "w.safetensors")
    state, shape = read_weights(tmp_path / "w.safetensors")
    assert DepthProConfig.from_shape(shape) == net.config and state.keys() == net.state_dict().keys()
    assert predict(tmp_path / "w.safetensors", tmp_path) == 0


def test_export_refuses_tensors_that_do_not_form_the_recorded_network(tmp_path, net, capsys):
    state = {f"net.{k}": v for k, v in net.state_dict().items() if not k.startswith("head.")}
    torch.save({"hyper_parameters": HPARAMS, "state_dict": state}, tmp_path / "odd.ckpt")
    assert main(["export", "--ckpt", str(tmp_path / "odd.ckpt"), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'odd.ckpt'} (network ")
    assert "missing: head." in err[0]
    assert not (tmp_path / "m.pt").exists()
