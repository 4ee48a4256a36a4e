"""Depth Pro network configuration and the table of named presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DepthProConfig:
    """Size and layout of a Depth Pro network.

    The three ViTs (patch encoder, image encoder, FOV encoder) share one size
    (`embed_dim`, `depth`, `num_heads`); each is timm's DINOv2 ViT architecture
    with a `patch_size` patch embedding at a `vit_img_size` input. The network
    input is `4 * vit_img_size` pixels square.
    """

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = 16
    vit_img_size: int = 384
    hook_blocks: tuple[int, int] = (5, 11)
    encoder_feature_dims: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    decoder_features: int = 256
    fov_head: bool = True
    grad_checkpointing: bool = False
    """Activation checkpointing of every ViT block, applied by `dp_train.model.parallelize` (training)."""
    dinov2_weights: str | None = None
    """Optional local DINOv2 state dict (.pth/.safetensors) to initialise the ViTs."""

    RUNTIME_FIELDS = ("grad_checkpointing", "dinov2_weights")
    """Fields that say how the network is built or run, not the shape of its weights."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hook_blocks", tuple(self.hook_blocks))
        object.__setattr__(self, "encoder_feature_dims", tuple(self.encoder_feature_dims))
        self._validate()

    def _validate(self) -> None:
        if self.patch_size != 16:
            raise ValueError(
                f"patch_size={self.patch_size}: the decoder upsamples tokens 16x back to pixels, so it must be 16"
            )
        window_unit = 8 * self.patch_size
        if self.vit_img_size % window_unit:
            raise ValueError(
                f"vit_img_size={self.vit_img_size} must be a multiple of 8 * patch_size = "
                f"{window_unit}: the 25% window overlap must be an even number of tokens"
            )
        blocks = self.hook_blocks
        if len(blocks) != 2 or not 0 <= blocks[0] < blocks[1] < self.depth:
            raise ValueError(f"hook_blocks={blocks} must be two increasing block indices below depth={self.depth}")
        if len(self.encoder_feature_dims) != 4:
            raise ValueError(f"encoder_feature_dims={self.encoder_feature_dims} must have 4 entries")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.decoder_features % 8:
            raise ValueError(f"decoder_features={self.decoder_features} must be a multiple of 8 (FOV head)")

    @property
    def img_size(self) -> int:
        """Side of the square network input in pixels (4x the ViT input)."""
        return 4 * self.vit_img_size

    @property
    def grid_size(self) -> int:
        """Tokens per side of one ViT window."""
        return self.vit_img_size // self.patch_size

    @classmethod
    def preset(cls, name: str, **overrides) -> "DepthProConfig":
        """Return the named preset from `PRESETS`, with optional field overrides."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def from_shape(cls, shape: Mapping[str, Any], **overrides) -> "DepthProConfig":
        """The network a recorded shape describes (see `network_shape`; `depth_pro_l` when it names no preset),
        with optional field overrides on top."""
        return cls.preset(shape.get("preset", "depth_pro_l"), **(dict(shape.get("network") or {}) | overrides))

    def replace(self, **overrides) -> "DepthProConfig":
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, DepthProConfig] = {
    # The released model: three DINOv2 ViT-L/16 at 384 px, 951,991,330 parameters.
    "depth_pro_l": DepthProConfig(),
    # ViT-B/16-sized encoders (DINOv2 ViT-B weights fit), for ablations on a few GPUs.
    "base": DepthProConfig(
        embed_dim=768, depth=12, num_heads=12, hook_blocks=(2, 5),
        encoder_feature_dims=(128, 256, 512, 512), decoder_features=128,
    ),
    # ViT-S/16-sized encoders (DINOv2 ViT-S weights fit), for one-GPU experiments.
    "small": DepthProConfig(
        embed_dim=384, depth=12, num_heads=6, hook_blocks=(2, 5),
        encoder_feature_dims=(64, 128, 256, 256), decoder_features=64,
    ),
    # The network of ../shared/fixtures (reference outputs exist for it); also the test size.
    "tiny": DepthProConfig(
        embed_dim=64, depth=4, num_heads=2, hook_blocks=(0, 1),
        encoder_feature_dims=(16, 32, 64, 64), decoder_features=32,
    ),
}


def network_shape(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """What in a training run's model hyper-parameters fixes its weights' shapes: `preset` and the shape fields of
    `network` (fields on how the network is built or run, such as `grad_checkpointing`, dropped); {} for none."""
    shape: dict[str, Any] = {"preset": hparams["preset"]} if "preset" in hparams else {}
    fields = {k: v for k, v in (hparams.get("network") or {}).items() if k not in DepthProConfig.RUNTIME_FIELDS}
    return shape | ({"network": fields} if fields else {})
