"""Weights trained at another ViT size load into a network of this size: the three ViTs' position embeddings and the
FOV head's last kernel are resampled, one line says so, every other tensor loads as it is; any other mismatch fails
with the one line it always did, and weights of the network's own size load untouched."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from dp_train.model import DepthProConfig, build_depth_pro, load_weights, save_weights
from dp_train.model.resample import FOV_KERNEL, fit_to_grid, resample_pos_embed, resize_kernel
from dp_train.model.weights import fit_state_dict, read_weights

POS_EMBEDS = ("encoder.patch_encoder.pos_embed", "encoder.image_encoder.pos_embed", "fov.encoder.0.pos_embed")
GRID_TENSORS = {*POS_EMBEDS, FOV_KERNEL}
TINY_512 = DepthProConfig.preset("tiny", vit_img_size=128)


@pytest.fixture(scope="module")
def trained_at_512(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """A tiny network of a 512² input (8x8 tokens per ViT) and its weights as a .safetensors file."""
    torch.manual_seed(0)
    model = build_depth_pro(TINY_512)
    path = tmp_path_factory.mktemp("weights") / "w512.safetensors"
    save_weights(model, path)
    return model, path


def messages(caplog) -> list[str]:
    """What the weights loader logged."""
    return [r.getMessage() for r in caplog.records if r.name == "dp_train.model.weights"]


def test_weights_of_another_size_load_with_their_grids_resampled(trained_at_512, caplog):
    source, path = trained_at_512
    model = build_depth_pro(TINY_512.replace(vit_img_size=256))
    with caplog.at_level(logging.WARNING):
        load_weights(model, path)
    assert messages(caplog) == [f"{path}: resampled the position embeddings of 3 ViTs from 8x8 to 16x16 tokens and "
                                "the FOV head's last kernel from 2x2 to 4x4 (weights trained at 512², network 1024²)"]
    before, after = source.state_dict(), model.state_dict()
    for key in before.keys() - GRID_TENSORS:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    for key in POS_EMBEDS:  # timm's resampling, as the DINOv2 initialisation does it; the class token's kept
        assert after[key].shape == (1, 1 + 16 * 16, 64)
        torch.testing.assert_close(after[key], resample_abs_pos_embed(before[key], [16, 16], num_prefix_tokens=1),
                                   rtol=0, atol=0)
        torch.testing.assert_close(after[key][:, 0], before[key][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(after[FOV_KERNEL], resize_kernel(before[FOV_KERNEL], 4), rtol=0, atol=0)


def test_the_resampled_network_saves_as_a_network_of_its_new_size(trained_at_512, tmp_path, caplog):
    """What is saved (or exported) after the resampling holds the new grids and records the new size: it loads
    into a network of that size as it is, and is no longer the file it came from."""
    model = build_depth_pro(TINY_512.replace(vit_img_size=256))
    load_weights(model, trained_at_512[1])
    save_weights(model, tmp_path / "w1024.safetensors")
    state, shape = read_weights(tmp_path / "w1024.safetensors")
    assert shape["network"]["vit_img_size"] == 256
    assert all(state[key].shape == (1, 257, 64) for key in POS_EMBEDS) and state[FOV_KERNEL].shape[-2:] == (4, 4)
    again = build_depth_pro(DepthProConfig.from_shape(shape))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_weights(again, tmp_path / "w1024.safetensors")
    assert messages(caplog) == []
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_another_mismatch_still_fails_with_one_line_and_loads_nothing(trained_at_512, tmp_path, caplog):
    """Another size AND another decoder width: no resampling, the error names the mismatches as it always did."""
    narrow = build_depth_pro(TINY_512.replace(decoder_features=16))
    save_weights(narrow, tmp_path / "narrow.pt")
    model = build_depth_pro(TINY_512.replace(vit_img_size=256))
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError) as info:
        load_weights(model, tmp_path / "narrow.pt")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'narrow.pt'} does not fit the model: ")
    assert "shape mismatches: encoder.patch_encoder.pos_embed [1, 65, 64] vs model [1, 257, 64]" in message
    assert messages(caplog) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in untouched.items())


def test_a_position_embedding_of_no_square_grid_is_a_mismatch(trained_at_512):
    source, _ = trained_at_512
    state = source.state_dict() | {POS_EMBEDS[0]: torch.zeros(1, 1 + 50, 64)}
    with pytest.raises(ValueError, match=r"1 shape mismatches: encoder.patch_encoder.pos_embed \[1, 51, 64\]"):
        fit_state_dict(build_depth_pro(TINY_512), state, "odd.pt")


def test_weights_of_the_network_size_are_left_exactly_as_they_are(trained_at_512):
    source, _ = trained_at_512
    state = source.state_dict()
    assert fit_to_grid(build_depth_pro(TINY_512), state) == (state, None)
    vit = source.encoder.patch_encoder
    assert resample_pos_embed(vit.pos_embed, vit) is vit.pos_embed


def test_apples_1536_checkpoint_would_load_at_1024(fixtures_dir, caplog):
    """depth_pro.pt's tensor shapes (the fixtures' manifest), on the meta device: against a 1024² network they
    differ in exactly the grid-sized tensors, which the loader maps to the network's; everything else fits."""
    manifest = json.loads((fixtures_dir / "apple_depth_pro_state_dict_manifest.json").read_text())["tensors"]
    state = {key: torch.empty(shape, device="meta") for key, shape in manifest.items()}
    with torch.device("meta"):
        model = build_depth_pro(DepthProConfig.preset("depth_pro_l", vit_img_size=256))
    expected = model.state_dict()
    differing = {key: (shape, list(expected[key].shape)) for key, shape in manifest.items()
                 if list(expected[key].shape) != shape}
    assert differing == {**{key: ([1, 577, 1024], [1, 257, 1024]) for key in POS_EMBEDS},
                         FOV_KERNEL: ([1, 32, 6, 6], [1, 32, 4, 4])}
    with caplog.at_level(logging.WARNING):
        fitted = fit_state_dict(model, state, "depth_pro.pt")
    assert all(fitted[key].shape == expected[key].shape for key in expected)
    assert messages(caplog) == ["depth_pro.pt: resampled the position embeddings of 3 ViTs from 24x24 to 16x16 tokens "
                                "and the FOV head's last kernel from 6x6 to 4x4 (weights trained at 1536², network "
                                "1024²)"]
