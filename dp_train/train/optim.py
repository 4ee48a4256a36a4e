"""The optimiser: AdamW over four parameter groups (encoder | decoder) x (decay | no decay), plus one of LoRA
factors when there are some, stepped per optimizer step by the LR schedule (dp_train/train/schedules.py)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dp_train.model.lora import is_lora_parameter

NO_DECAY_NAMES = ("pos_embed", "cls_token", "gamma", "norm", "bias")
"""Parameters kept out of weight decay: embeddings, layer scales, norms and biases."""
ENCODER_PREFIXES = ("encoder.patch_encoder.", "encoder.image_encoder.", "fov.encoder.0.")
"""The pretrained ViT encoders, which train at the encoder LR (the rest, randomly initialised, at the decoder's)."""


def parameter_groups(net: nn.Module, lr_encoder: float, lr_decoder: float, weight_decay: float,
                     lr_lora: float | None = None) -> list[dict]:
    """Four groups: (encoder | decoder) x (decay | no decay), trainable parameters only, in a fixed order (the
    optimizer state in checkpoints is matched by position); LoRA factors in a fifth, at `lr_lora`, without weight
    decay (decay would pull the update, not the weight, towards zero)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    lora = [param for name, param in net.named_parameters() if param.requires_grad and is_lora_parameter(name)]
    for name, param in net.named_parameters():
        if param.requires_grad and not is_lora_parameter(name):
            key = (name.startswith(ENCODER_PREFIXES), not any(n in name for n in NO_DECAY_NAMES))
            groups.setdefault(key, []).append(param)
    lora_group = [{"params": lora, "lr": lr_lora, "weight_decay": 0.0, "name": "lora"}] if lora else []
    return lora_group + [
        {
            "params": params,
            "lr": lr_encoder if is_encoder else lr_decoder,
            "weight_decay": weight_decay if decays else 0.0,
            "name": f"{'encoder' if is_encoder else 'decoder'}{'' if decays else '_no_decay'}",
        }
        for (is_encoder, decays), params in sorted(groups.items())
    ]


def adamw_per_step(groups: list[dict], schedule: Callable[[int], float]) -> dict:
    """Lightning's optimizer configuration: AdamW (Adam at weight decay 0, the paper's) with `schedule` as the
    LR multiplier of every group, stepped per optimizer step."""
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def freeze_for_mode(net: nn.Module, mode: str) -> None:
    """FOV mode trains only `fov.*` (the depth network frozen); depth mode freezes `fov.*` (the FOV
    head is trained separately; frozen, DDP does not wait for gradients it never gets)."""
    if mode == "fov" and net.fov is None:
        raise ValueError("mode='fov' needs a network with fov_head=True")
    for name, param in net.named_parameters():
        if name.startswith("fov.") != (mode == "fov"):
            param.requires_grad_(False)


def freeze_vit_layernorms(net: nn.Module) -> None:
    """Freeze every LayerNorm of the ViT encoders (their pretrained statistics stay as loaded; paper, Tab. 16)."""
    for vit in net.vits():
        for module in vit.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(False)
