"""Low-rank adaptation (LoRA) of the ViT encoders' linear layers, through torch's parametrizations, and its merge
into plain weights.

A targeted layer's weight W becomes `W + scale * B @ A` (A: rank x in, B: out x rank, scale = alpha / rank) with W
frozen and only A, B trained; B starts at zero, so the adapted network starts as the loaded one. In a state dict a
parametrized weight is stored as `<layer>.parametrizations.weight.original` (W) plus `...weight.0.lora_a`,
`...lora_b` and `...scale`, so a checkpoint resumes exactly and `merge_lora` turns it back into Apple's layout
(`<layer>.weight`) for export, `predict` and any later `init_from`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

ENCODER_PARTS = {"patch_encoder": "encoder.patch_encoder", "image_encoder": "encoder.image_encoder",
                 "fov_encoder": "fov.encoder.0"}
"""The three ViTs LoRA can adapt, by the name `model.lora.encoders` uses -> their module path in the network."""
TARGET_LAYERS = ("qkv", "proj", "fc1", "fc2")
"""Linear layers of a timm ViT block: attention in/out projections and the MLP's two layers."""
ORIGINAL = ".parametrizations.weight.original"
"""How a parametrized layer's frozen weight is named in a state dict (torch's convention)."""


@dataclass
class LoraConfig:
    """`model.lora`: which layers of which ViTs get a low-rank update, of what rank and scale.

    Args:
        rank: rank r of the update B @ A.
        alpha: the update is scaled by alpha / r (so changing r keeps the initial step size).
        encoders: ViTs to adapt: `patch_encoder`, `image_encoder`, `fov_encoder`. Their own weights are frozen;
            only the low-rank factors of their target layers train.
        targets: layer names in every block: `qkv`, `proj` (attention), `fc1`, `fc2` (MLP).
        lr: learning rate of the low-rank factors (ours: LoRA factors start at zero and need a larger step than
            the full weights' fine-tuning LR).
    """

    rank: int = 8
    alpha: float = 16.0
    encoders: list[str] = field(default_factory=lambda: ["patch_encoder", "image_encoder"])
    targets: list[str] = field(default_factory=lambda: list(TARGET_LAYERS))
    lr: float = 1.0e-4

    def check(self, key: str) -> None:
        """Raise one ValueError naming the first bad value under `key`."""
        if self.rank < 1:
            raise ValueError(f"{key}.rank={self.rank}: must be at least 1")
        if not self.alpha > 0 or not self.lr > 0:
            raise ValueError(f"{key}: alpha={self.alpha} and lr={self.lr} must be > 0")
        for name, given, allowed in (("encoders", self.encoders, ENCODER_PARTS), ("targets", self.targets,
                                                                                 TARGET_LAYERS)):
            unknown = sorted(set(given) - set(allowed))
            if unknown or not given:
                raise ValueError(f"{key}.{name}={given}: choose from {list(allowed)}")


class LowRankUpdate(nn.Module):
    """The parametrization `W -> W + scale * B @ A` (A Kaiming-uniform, B zero: the identity at the start)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, dtype=weight.dtype, device=weight.device))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.register_buffer("scale", torch.tensor(alpha / rank, dtype=torch.float32, device=weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The adapted weight."""
        return weight + (self.lora_b @ self.lora_a) * self.scale.to(weight.dtype)


def add_lora(net: nn.Module, config: LoraConfig) -> int:
    """Freeze the chosen ViTs and parametrize their target layers with a `LowRankUpdate`; returns how many layers
    were adapted."""
    adapted = 0
    for part in config.encoders:
        if not has_part(net, part):
            raise ValueError(f"model.lora.encoders names {part!r}, which this network does not have")
        vit = net.get_submodule(ENCODER_PARTS[part])
        vit.requires_grad_(False)
        for name, module in vit.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in config.targets and ".blocks." in f".{name}":
                parametrize.register_parametrization(
                    module, "weight", LowRankUpdate(module.weight, config.rank, config.alpha), unsafe=True)
                adapted += 1
    return adapted


def has_part(net: nn.Module, part: str) -> bool:
    """Whether the network has the ViT `part` (a network without FOV head has no `fov_encoder`)."""
    try:
        net.get_submodule(ENCODER_PARTS[part])
    except AttributeError:
        return False
    return True


def is_lora_parameter(name: str) -> bool:
    """Whether the parameter `name` is a low-rank factor."""
    return name.endswith((".lora_a", ".lora_b"))


def merge_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every parametrized layer's weight merged (`W + scale * B @ A`, computed in float32, stored
    in W's dtype) under its plain name: Apple's layout. A state without LoRA layers is returned unchanged."""
    if not any(key.endswith(ORIGINAL) for key in state):
        return state
    merged = {}
    for key, value in state.items():
        if key.endswith(ORIGINAL):
            stem = key.removesuffix(ORIGINAL)
            factors = f"{stem}.parametrizations.weight.0."
            update = state[factors + "lora_b"].float() @ state[factors + "lora_a"].float()
            merged[f"{stem}.weight"] = (value.float() + update * state[factors + "scale"].float()).to(value.dtype)
        elif ".parametrizations.weight.0." not in key:
            merged[key] = value
    return merged
