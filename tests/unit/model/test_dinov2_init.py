"""Encoders initialise from a local timm DINOv2 file exactly as the reference resizes it."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from dp_train.model import build_depth_pro


def dinov2_file(tmp_path, cfg, suffix: str, **size_overrides) -> tuple:
    """Write the state dict of a random timm DINOv2 ViT (14 px patches, 518 px input) of the config's size."""
    sizes = dict(embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads) | size_overrides
    source = timm.create_model("vit_large_patch14_dinov2", pretrained=False, num_classes=0, **sizes)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"dinov2{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return path, state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_all_three_vits_start_from_the_resized_dinov2_weights(tmp_path, fast_cfg, suffix):
    path, state = dinov2_file(tmp_path, fast_cfg, suffix)
    model = build_depth_pro(fast_cfg.replace(dinov2_weights=str(path)))

    kernel = state["patch_embed.proj.weight"]
    expected_kernel = F.interpolate(kernel, size=(16, 16), mode="bicubic", align_corners=False) * (14 / 16) ** 2
    grid = fast_cfg.grid_size
    expected_pos = resample_abs_pos_embed(state["pos_embed"], new_size=[grid, grid], num_prefix_tokens=1)
    for vit in model.vits():
        torch.testing.assert_close(vit.patch_embed.proj.weight, expected_kernel)
        torch.testing.assert_close(vit.pos_embed, expected_pos)
        torch.testing.assert_close(vit.pos_embed[:, 0], state["pos_embed"][:, 0])  # class token position kept
        torch.testing.assert_close(vit.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
        torch.testing.assert_close(vit.cls_token, state["cls_token"])


def test_resized_patch_kernel_keeps_the_response_to_a_flat_image(tmp_path, fast_cfg):
    """The area-ratio rescale makes a constant image embed (nearly) as it did at 14 px."""
    path, state = dinov2_file(tmp_path, fast_cfg, ".pth")
    channels = state["patch_embed.proj.weight"].shape[:2]
    ramp = torch.linspace(-0.1, 0.1, 14)
    smooth = torch.randn(*channels, 1, 1) * (1 + ramp[:, None] + ramp[None, :])  # level + gentle slope
    state["patch_embed.proj.weight"] = smooth
    torch.save(state, path)
    model = build_depth_pro(fast_cfg.replace(dinov2_weights=str(path)))
    resized = model.encoder.patch_encoder.patch_embed.proj.weight
    torch.testing.assert_close(resized.sum(dim=(1, 2, 3)), smooth.sum(dim=(1, 2, 3)), rtol=1e-3, atol=1e-6)


def test_a_dinov2_file_of_another_size_is_refused_by_name(tmp_path, fast_cfg):
    path, _ = dinov2_file(tmp_path, fast_cfg, ".pth", embed_dim=32, num_heads=2)
    with pytest.raises(ValueError, match=rf"{path.name} does not fit the model: .*shape mismatches"):
        build_depth_pro(fast_cfg.replace(dinov2_weights=str(path)))


def test_a_file_that_is_not_a_vit_is_refused_by_name(tmp_path, fast_cfg):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="other.pth: not a timm ViT state dict"):
        build_depth_pro(fast_cfg.replace(dinov2_weights=str(path)))


def test_a_missing_dinov2_file_is_named(tmp_path, fast_cfg):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_depth_pro(fast_cfg.replace(dinov2_weights=str(tmp_path / "nope.pth")))
