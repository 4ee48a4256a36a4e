"""One loader for every weights format, strict by default, with one clear error on mismatch."""

from __future__ import annotations

import pytest
import torch

from dp_train.model import build_depth_pro, load_weights, save_weights


@pytest.fixture
def saved(tmp_path, fast_cfg):
    """A model with its weights written as .safetensors."""
    model = build_depth_pro(fast_cfg)
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    return model, path


def assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip_in_each_format(tmp_path, fast_cfg, suffix):
    model = build_depth_pro(fast_cfg)
    save_weights(model, tmp_path / f"w{suffix}")
    other = build_depth_pro(fast_cfg)
    load_weights(other, tmp_path / f"w{suffix}")
    assert_same_weights(model, other)
    assert not list(tmp_path.glob("*.tmp"))


def test_lightning_checkpoints_load_the_network_part(tmp_path, fast_cfg, saved):
    model, _ = saved
    ckpt = {
        "epoch": 3,
        "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()} | {"ema.step": torch.tensor(5)},
    }
    torch.save(ckpt, tmp_path / "run.ckpt")
    other = build_depth_pro(fast_cfg)
    load_weights(other, tmp_path / "run.ckpt")
    assert_same_weights(model, other)


def test_missing_and_unexpected_keys_are_named(tmp_path, fast_cfg, saved):
    model, _ = saved
    state = model.state_dict()
    state.pop("head.0.weight")
    state["head.9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt does not fit the model: 1 missing: head.0.weight; 1 unexpected"):
        load_weights(build_depth_pro(fast_cfg), tmp_path / "bad.pt")


def test_shape_mismatch_is_named_even_when_not_strict(tmp_path, fast_cfg, saved):
    _, path = saved
    other = build_depth_pro(fast_cfg.replace(decoder_features=64))
    with pytest.raises(ValueError, match=r"75 shape mismatches: encoder.upsample_latent0.1.weight \[16, 32, 2, 2\] vs model \[16, 64, 2, 2\]"):
        load_weights(other, path, strict=False)


def test_strict_false_loads_the_overlap(tmp_path, fast_cfg, saved):
    model, path = saved
    other = build_depth_pro(fast_cfg.replace(fov_head=False))
    load_weights(other, path, strict=False)
    torch.testing.assert_close(other.head[0].weight, model.head[0].weight)


def test_corrupt_and_missing_files_give_one_line_naming_them(tmp_path, fast_cfg):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="cannot read weights file .*corrupt.pt") as info:
        load_weights(build_depth_pro(fast_cfg), corrupt)
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_weights(build_depth_pro(fast_cfg), tmp_path / "absent.safetensors")


class NotATensor:
    """An arbitrary pickled object: weights_only loading must refuse to run it."""


def test_pickled_code_is_never_executed(tmp_path, fast_cfg):
    path = tmp_path / "pickle.pt"
    torch.save({"x": NotATensor()}, path)
    with pytest.raises(ValueError, match="cannot read weights file"):
        load_weights(build_depth_pro(fast_cfg), path)
