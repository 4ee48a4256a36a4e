"""The FOV stage trains the FOV head only: the depth network leaves it bit-identical."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from dp_train.cli.main import main
from dp_train.synth import write_synthetic_shards
from dp_train.losses import fov_objective
from dp_train.model import read_state_dict, save_weights
from dp_train.train.module import DepthProModule
from tests.helpers.paths import REPO

NETWORK = {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}


@pytest.mark.parametrize("kind", ["l2_fov", "l1_log_focal"])
def test_samples_without_focal_length_are_excluded_not_guessed(kind):
    fov = torch.tensor([60.0, 60.0, 90.0], requires_grad=True)
    f_px = torch.tensor([400.0, 0.0, float("nan")])  # only the first sample's focal length is known
    terms, per_image = fov_objective(fov, f_px, width=512, kind=kind)
    assert per_image[1] == 0 and per_image[2] == 0
    terms["loss"].backward()
    assert fov.grad[1] == 0 and fov.grad[2] == 0 and torch.isfinite(fov.grad).all()


def test_the_default_fov_loss_is_l2_on_the_horizontal_fov_in_radians():
    """Sec. 3.3: L2. f = 256 px at width 512 is a 90 degree FOV; predicting 80 degrees costs (10 deg in rad)^2."""
    terms, per_image = fov_objective(torch.tensor([80.0, 90.0]), torch.tensor([256.0, 256.0]), width=512)
    assert per_image.tolist() == pytest.approx([math.radians(10.0) ** 2, 0.0], abs=1e-7)
    assert terms["loss"].item() == pytest.approx(math.radians(10.0) ** 2 / 2, rel=1e-5)
    focal_80 = 256.0 / math.tan(math.radians(40.0))
    assert terms["log_focal"].item() == pytest.approx(math.log(focal_80 / 256.0) / 2, rel=1e-5)


@pytest.mark.slow
def test_fov_stage_trains_the_fov_head_and_leaves_the_depth_network_unchanged(tmp_path):
    shards = write_synthetic_shards(tmp_path / "shards", "fov", 8, size=(64, 64), seed=4, progress=False)
    start = tmp_path / "depth.safetensors"
    save_weights(DepthProModule(preset="tiny", network=NETWORK).net, start)  # stands in for stage 2's network
    recipe = {
        "trainer": {"max_steps": 4, "limit_val_batches": 0, "logger": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
        "model": {"preset": "tiny", "network": NETWORK, "init_from": str(start), "lr_decoder": 1e-2,
                  "lr_encoder": 1e-2, "warmup_steps": 1},
        "data": {"train_sources": [{"name": "fov", "urls": str(shards)}], "image_size": 512, "batch_size": 2,
                 "num_workers": 0, "pin_memory": False},
    }
    path = tmp_path / "tiny_fov.yaml"
    path.write_text(yaml.safe_dump(recipe))
    fov_recipe = yaml.safe_load((REPO / "recipes/fov.yaml").read_text())
    assert fov_recipe["model"]["mode"] == "fov"
    assert main(["fit", "--recipe", str(REPO / "recipes/quickstart.yaml"), "--recipe", str(path),
                 "--model.mode=fov"]) == 0
    before, after = read_state_dict(start), read_state_dict(tmp_path / "ckpt" / "last.ckpt")
    depth = [k for k in before if not k.startswith("fov.")]
    assert depth and all(torch.equal(before[k], after[k]) for k in depth)  # bit-identical
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("fov."))


def test_a_fresh_fov_head_predicts_a_plausible_fov_and_gets_gradients():
    """From an output near 0 degrees the objective's [1, 179] clamp would pass no gradient at all."""
    module = DepthProModule(preset="tiny", network=NETWORK, mode="fov")
    image = torch.rand(2, 3, 512, 512) * 2 - 1
    _, fov = module.net(image)
    assert ((fov > 30) & (fov < 100)).all()
    terms, _ = fov_objective(fov, torch.tensor([300.0, 600.0]), width=512)
    terms["loss"].backward()
    grads = [p.grad for name, p in module.net.named_parameters() if name.startswith("fov.") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
