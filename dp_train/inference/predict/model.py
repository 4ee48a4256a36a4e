"""The network `predict` runs: built for the weights and loaded strictly, on the requested device and precision,
optionally compiled."""

from __future__ import annotations

from pathlib import Path

import torch

from dp_train.inference.predict.errors import UsageError, one_line
from dp_train.model import DepthPro, build_depth_pro
from dp_train.model.weights import config_for, fit_state_dict, read_weights

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    """The requested device, or cuda when available else cpu; UsageError if CUDA is asked for but absent."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available (use --device cpu)")
    return torch.device(name)


def check_dtype_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Probe the ops the network needs in `dtype` on `device`; UsageError if this build lacks them."""
    try:
        x = torch.zeros(1, 3, 8, 8, device=device, dtype=dtype)
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).to(device=device, dtype=dtype)
        y = torch.nn.functional.interpolate(conv(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        torch.nn.functional.layer_norm(y, y.shape[-1:])
        torch.nn.functional.conv_transpose2d(y, torch.zeros(4, 4, 2, 2, device=device, dtype=dtype), stride=2)
    except (RuntimeError, NotImplementedError) as err:
        name = str(dtype).removeprefix("torch.")
        raise UsageError(
            f"{name} is not supported on {device.type} by this torch build ({one_line(err)}); use --dtype fp32"
        ) from None


def load_model(weights: Path, preset: str | None, vit_img_size: int | None = None) -> DepthPro:
    """Build the network `weights` need and load them strictly. Its shape: `preset` if given, else the one the
    weights record (a training checkpoint's hyper-parameters, an exported .safetensors' header), else
    `depth_pro_l`; `vit_img_size` on top (weights trained at another size load with their ViTs' position
    embeddings resampled, said on stderr). The FOV head is included iff the weights have one."""
    try:
        state, shape = read_weights(weights)
        overrides = {"vit_img_size": vit_img_size} if vit_img_size is not None else {}
        model = build_depth_pro(config_for(state, {"preset": preset} if preset else shape, **overrides))
        state = fit_state_dict(model, state, str(weights))
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        raise UsageError(one_line(err)) from None
    model.load_state_dict(state)
    return model.eval()


def forward_of(model: DepthPro, compile: bool) -> torch.nn.Module:
    """What runs the network: the model itself, or with `compile` `torch.compile(model)` (one graph per batch
    shape and FOV setting; the runner keeps the batch shape fixed)."""
    return torch.compile(model, dynamic=False) if compile else model
