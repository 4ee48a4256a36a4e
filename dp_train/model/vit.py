"""DINOv2-style ViT encoders (built by timm) and their initialisation from DINOv2 weights."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from dp_train.model.config import DepthProConfig
from dp_train.model.resample import resample_pos_embed, resize_kernel
from dp_train.model.weights import check_state_dict_fits, read_state_dict

TIMM_ARCH = "vit_large_patch14_dinov2"
"""timm architecture of every Depth Pro ViT: layer scale, qkv bias, class token, no registers."""


def create_vit(cfg: DepthProConfig) -> nn.Module:
    """Build one randomly initialised ViT of the configured size; never downloads.

    `dynamic_img_size=True` makes the patch embedding return a token grid, so
    `forward_intermediates` can reshape block outputs to NCHW maps.
    """
    vit = timm.create_model(
        TIMM_ARCH,
        pretrained=False,
        img_size=cfg.vit_img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        dynamic_img_size=True,
        num_classes=0,
    )
    return vit


def tokens_to_map(tokens: torch.Tensor, vit: nn.Module) -> torch.Tensor:
    """Drop the prefix (class) tokens of a (B, 1+N, C) sequence and reshape to (B, C, n, n)."""
    spatial = tokens[:, vit.num_prefix_tokens :]
    side = int(round(spatial.shape[1] ** 0.5))
    return spatial.reshape(spatial.shape[0], side, side, -1).permute(0, 3, 1, 2)


def adapt_dinov2_state_dict(state: dict[str, torch.Tensor], vit: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Convert a timm DINOv2 state dict (14 px patches, 518 px) to `vit`'s patch and grid size.

    Classification-head tensors are dropped; everything else must match `vit`
    exactly, else a ValueError names the file and the first offending keys.
    """
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise ValueError(f"{source}: not a timm ViT state dict (no patch_embed.proj.weight / pos_embed)")
    target_patch = vit.patch_embed.proj.weight.shape[-1]
    state["patch_embed.proj.weight"] = resize_kernel(state["patch_embed.proj.weight"], target_patch)
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], vit)
    return state


def load_dinov2_weights(vit: nn.Module, path: str | Path) -> None:
    """Initialise `vit` in place from a local timm DINOv2 state dict file."""
    state = adapt_dinov2_state_dict(read_state_dict(path), vit, str(path))
    check_state_dict_fits(vit, state, str(path))
    vit.load_state_dict(state, strict=True)
