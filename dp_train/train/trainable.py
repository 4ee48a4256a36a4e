"""What trains: freezing the network by part (`model.freeze`), and the one line that says, at the start of a run,
how many parameters train and what their optimizer state costs."""

from __future__ import annotations

from torch import nn

from dp_train.model.lora import LoraConfig, add_lora, is_lora_parameter
from dp_train.train.optim import freeze_for_mode, freeze_vit_layernorms

PARTS: dict[str, tuple[str, ...]] = {
    "patch_encoder": ("encoder.patch_encoder.",),
    "image_encoder": ("encoder.image_encoder.",),
    "fov_encoder": ("fov.encoder.0.",),
    "decoder": ("encoder.upsample", "encoder.fuse_lowres.", "decoder."),
    "heads": ("head.", "fov.encoder.1.", "fov.downsample.", "fov.head."),
}
"""`model.freeze` names -> the parameter name prefixes of that part: the three ViTs (DINOv2-initialised), the
decoder (the encoder's projections of the ViT features plus the fusion stages; randomly initialised in the paper)
and the heads (depth head; the FOV head's convolutions and its projection of the FOV ViT's features)."""
ADAM_STATE_BYTES = 8
"""AdamW keeps two float32 moments per trained parameter."""


def part_of(name: str) -> str:
    """The part a parameter belongs to (every parameter of the network is in exactly one)."""
    return next(part for part, prefixes in PARTS.items() if name.startswith(prefixes))


def freeze_parts(net: nn.Module, parts: list[str]) -> None:
    """Freeze every parameter of the named parts (their values stay as loaded); an unknown name is one
    ValueError listing the parts."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"model.freeze names {unknown[0]!r}: choose from {list(PARTS)}")
    for name, param in net.named_parameters():
        if not is_lora_parameter(name) and part_of(name) in parts:
            param.requires_grad_(False)


def prepare_trainable(net: nn.Module, mode: str, freeze_vit_norms: bool, freeze: list[str],
                      lora: LoraConfig | dict | None) -> LoraConfig | None:
    """Set what trains, in order: the mode's part (`fov` trains only the FOV head), the ViTs' LayerNorms frozen,
    LoRA factors added (the adapted ViTs frozen), then `model.freeze`'s parts; gives back the LoRA config (saved
    hyper-parameters give it back as a dict). A ValueError when nothing is left to train."""
    freeze_for_mode(net, mode)
    if freeze_vit_norms:
        freeze_vit_layernorms(net)
    if isinstance(lora, dict):
        lora = LoraConfig(**lora)
    if lora is not None:
        lora.check("model.lora")
        add_lora(net, lora)
    freeze_parts(net, freeze)
    if not any(param.requires_grad for param in net.parameters()):
        raise ValueError(f"model.freeze={freeze} leaves nothing of the network to train in mode={mode!r}")
    return lora


def trainable_summary(net: nn.Module) -> str:
    """One line: trained parameters of all, per part (LoRA factors apart), and AdamW's state for them."""
    total = trained = 0
    per_part: dict[str, int] = {}
    for name, param in net.named_parameters():
        count = param.numel()
        total += count if not is_lora_parameter(name) else 0
        if param.requires_grad:
            trained += count
            key = "lora" if is_lora_parameter(name) else part_of(name)
            per_part[key] = per_part.get(key, 0) + count
    parts = ", ".join(f"{part} {count / 1e6:.2f} M" for part, count in per_part.items())
    return (f"trainable parameters: {trained / 1e6:.2f} M of {total / 1e6:.2f} M ({100 * trained / total:.1f} %; "
            f"{parts or 'none'}); AdamW state {trained * ADAM_STATE_BYTES / 2**20:.0f} MiB")
