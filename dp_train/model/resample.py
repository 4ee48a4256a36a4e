"""Weights at another token grid: the resampling every path that loads weights into a network uses.

A Depth Pro network runs its three ViTs (patch, image, FOV encoder) at `vit_img_size` (the network input is 4x
that). Weights trained at one size (Apple's `depth_pro.pt`: 384 px ViTs, 24x24 tokens, 1536² input) differ from a
network of another size in two kinds of tensors only:
- each ViT's `pos_embed` (class token + grid), resampled with timm's `resample_abs_pos_embed` (bicubic,
  antialiased when shrinking; the class token's position kept), as the DINOv2 initialisation (dp_train.model.vit)
  and Apple's own code resize their ViTs;
- the FOV head's last convolution (`FOV_KERNEL`), whose kernel, ceil(grid / 4) square, spans the head's whole
  map: resized as the patch embedding is (`resize_kernel`; our choice, Apple's code runs at 1536² only).
Every other tensor must fit exactly; the network built from resampled weights is a network of the new size (its
state dict, saved or exported, holds the new grid).
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

FOV_KERNEL = "fov.head.4.weight"
"""Apple's name of the FOV head's last convolution, whose kernel size follows the ViT grid (dp_train.model.network)."""


def resize_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (C_out, C_in, k, k) convolution kernel to `size` x `size` as Depth Pro resizes its patch embedding.

    Bicubic interpolation of the kernel, scaled by the area ratio (k / size)^2 so
    that a constant input gives the same response. timm's own pretrained path
    uses a pseudo-inverse resize instead, which gives different weights.
    """
    old_h, old_w = weight.shape[-2:]
    resized = F.interpolate(weight.float(), size=(size, size), mode="bicubic", align_corners=False)
    return (resized * (old_h / size) * (old_w / size)).to(weight.dtype)


def resample_pos_embed(pos_embed: torch.Tensor, vit: nn.Module) -> torch.Tensor:
    """`pos_embed` of a timm ViT (prefix tokens + a square grid) resampled to `vit`'s token grid, in float32;
    the tensor itself, untouched, when it already has that grid."""
    grid = list(vit.patch_embed.grid_size)
    if source_grid(pos_embed, vit) == grid[0] == grid[1]:
        return pos_embed
    return resample_abs_pos_embed(pos_embed.float(), new_size=grid, num_prefix_tokens=vit.num_prefix_tokens)


def source_grid(pos_embed: torch.Tensor, vit: nn.Module) -> int | None:
    """Side of the square token grid `pos_embed` holds for a ViT like `vit` (same width and prefix tokens); None
    when it is no such embedding."""
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[2] != vit.pos_embed.shape[2]:
        return None
    tokens = pos_embed.shape[1] - vit.num_prefix_tokens
    side = math.isqrt(max(tokens, 0))
    return side if side > 0 and side * side == tokens else None


def fit_to_grid(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    """`state` with its grid-sized tensors (the ViTs' position embeddings, the FOV head's last kernel) resampled to
    `model`'s grid, and one line saying what was done; `state` unchanged and None unless those are the only tensors
    whose shapes differ from `model`'s (anything else is a real mismatch, left for the fit check to name)."""
    expected = model.state_dict()
    mismatched = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    vits = {key: vit_of(model, key) for key in mismatched if key != FOV_KERNEL}
    kernel = (state[FOV_KERNEL].shape[-1], expected[FOV_KERNEL].shape[-1]) if FOV_KERNEL in mismatched else None
    if not vits or any(vit is None or source_grid(state[key], vit) is None for key, vit in vits.items()):
        return state, None
    if kernel and not same_channels(state[FOV_KERNEL], expected[FOV_KERNEL]):
        return state, None
    resampled = {key: resample_pos_embed(state[key], vit) for key, vit in vits.items()}
    if kernel:
        resampled[FOV_KERNEL] = resize_kernel(state[FOV_KERNEL], kernel[1])
    grids = Counter((source_grid(state[key], vit), vit.patch_embed.grid_size[0]) for key, vit in vits.items())
    return state | resampled, describe(grids, kernel, getattr(model, "img_size", None))


def vit_of(model: nn.Module, key: str) -> nn.Module | None:
    """The timm ViT whose `pos_embed` the state-dict `key` is; None when `key` is no ViT's position embedding."""
    prefix, _, name = key.rpartition(".")
    owner = model.get_submodule(prefix) if name == "pos_embed" else None
    return owner if hasattr(owner, "patch_embed") and hasattr(owner, "num_prefix_tokens") else None


def same_channels(kernel: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether `kernel` is a square convolution kernel with `target`'s input and output channels."""
    return kernel.ndim == 4 and kernel.shape[:2] == target.shape[:2] and kernel.shape[2] == kernel.shape[3]


def describe(grids: Counter, kernel: tuple[int, int] | None, img_size: int | None) -> str:
    """One line: how many ViTs went from which grid to which, the FOV head's kernel sizes (None: not resized), and
    the network input sizes that means (Depth Pro's input is proportional to its ViTs' grid; `img_size`: the
    network's, if known)."""
    parts = [f"{n} ViT{'s' * (n > 1)} from {old}x{old} to {new}x{new} tokens" for (old, new), n in grids.items()]
    line = "resampled the position embeddings of " + ", ".join(parts)
    line += f" and the FOV head's last kernel from {kernel[0]}x{kernel[0]} to {kernel[1]}x{kernel[1]}" if kernel else ""
    if img_size is None or len(grids) != 1:
        return line
    (old, new), = grids
    return line + f" (weights trained at {img_size * old // new}², network {img_size}²)"
