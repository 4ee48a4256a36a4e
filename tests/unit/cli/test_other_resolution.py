"""Weights trained at one network size used at another, as users do it: `predict --vit-img-size` on released weights,
and `model.init_from` into a training run of another size whose checkpoint `export` writes as a network of that
size (the new grids, the new size recorded), which `predict` then runs without flags."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dp_train.cli.main import main
from dp_train.model import DepthProConfig, build_depth_pro, save_weights
from dp_train.model.weights import read_weights
from dp_train.train.module import DepthProModule
from tests.helpers.cli import run_dp_train

NETWORK = {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}
"""The shipped toy start's shape (recipes/toy_start.yaml), a 512² network."""
MESSAGE = ("resampled the position embeddings of 3 ViTs from 8x8 to 16x16 tokens and the FOV head's last kernel from "
           "2x2 to 4x4 (weights trained at 512², network 1024²)")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Weights of a 512² network (recording that shape, as the toy start does) and one image."""
    root = tmp_path_factory.mktemp("resolution")
    torch.manual_seed(0)
    save_weights(build_depth_pro(DepthProConfig.preset("tiny", **NETWORK)), root / "w512.safetensors")
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(root / "in.png")
    return root


@pytest.mark.slow
def test_predict_runs_weights_of_another_size_and_says_so(workspace, tmp_path):
    """One child process, as typed: the line on stderr, the run at 1024², a depth map at the image's size."""
    done = run_dp_train("predict", "--weights", "w512.safetensors", "--vit-img-size", "256", "--input", "in.png",
                        "--output", str(tmp_path), "--device", "cpu", "--f-px", "50", cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if "resampled" in line] == [f"w512.safetensors: {MESSAGE}"]
    assert json.loads((tmp_path / "summary.json").read_text())["network"]["vit_img_size"] == 256
    depth = np.load(tmp_path / "in.npy")
    assert depth.shape == (48, 64) and np.isfinite(depth).all()


def test_a_run_started_at_another_size_exports_a_network_of_that_size(workspace, tmp_path, caplog):
    network = NETWORK | {"vit_img_size": 256}
    with caplog.at_level(logging.WARNING):
        module = DepthProModule(preset="tiny", network=network, init_from=str(workspace / "w512.safetensors"))
    assert MESSAGE in caplog.text
    torch.save({"hyper_parameters": {"preset": "tiny", "network": network},
                "state_dict": {f"net.{k}": v for k, v in module.net.state_dict().items()}}, tmp_path / "last.ckpt")
    out = tmp_path / "w1024.safetensors"
    assert main(["export", "--ckpt", str(tmp_path / "last.ckpt"), "--out", str(out)]) == 0
    state, shape = read_weights(out)
    assert shape == {"preset": "tiny", "network": network}
    assert state["encoder.patch_encoder.pos_embed"].shape == (1, 1 + 16 * 16, 64)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "--weights", str(out), "--input", str(workspace / "in.png"), "--output",
                     str(tmp_path / "out"), "--device", "cpu", "--f-px", "50"]) == 0
    assert "resampled" not in caplog.text  # a 1024² network now: nothing left to resample
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["network"]["vit_img_size"] == 256
