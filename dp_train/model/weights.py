"""Weights I/O: one loader for Apple's `depth_pro.pt`, `.safetensors` and Lightning `.ckpt` files.

Every file is read with `weights_only=True`, a sharded checkpoint directory by
dp_train.runtime.sharded's restricted readers (no pickled code runs), and loaded strictly
by default; a file that does not fit raises one ValueError naming the file and the
first missing, unexpected and mis-shaped tensors. Weights trained at another ViT size (network input) load with
the ViTs' position embeddings (and the FOV head's last kernel) resampled to the network's token grid
(dp_train.model.resample; one line says so).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dp_train.model.config import DepthProConfig, network_shape
from dp_train.model.resample import fit_to_grid
from dp_train.model.lora import merge_lora

log = logging.getLogger(__name__)

LIGHTNING_PREFIX = "net."
"""Attribute under which the LightningModules keep the network (prefix of .ckpt keys)."""

SHAPE_KEY = "dp_train.network_shape"
"""Key of the network shape (JSON) in the header of the .safetensors files `save_state_dict` writes."""

_SHOWN = 3  # offending keys shown per category in an error message


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat tensor dict from .safetensors, a torch state dict, or a Lightning .ckpt (a single
    file, or the directory of shards an FSDP run writes, consolidated here)."""
    return read_weights(path)[0]


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The network tensors of `path` (as `read_state_dict`) and the network shape recorded with them
    (`network_shape`): a training checkpoint's hyper-parameters, or the header `save_state_dict` writes into a
    .safetensors file; {} when the file records none (Apple's `depth_pro.pt`)."""
    path = Path(path)
    if path.is_dir():
        obj, header = _read_sharded_checkpoint(path), {}
    elif not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    else:
        obj, header = _read_file(path)
    hparams = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    return _network_tensors(obj, path), header or (network_shape(hparams) if isinstance(hparams, dict) else {})


def safetensors_shape(path: str | Path) -> dict[str, Any]:
    """The network shape a .safetensors file's header records (`save_state_dict`), without reading its tensors;
    {} when it records none or cannot be read (loading it reports why)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get(SHAPE_KEY, "{}"))
    except Exception:  # noqa: BLE001 - the load that follows names the problem
        return {}
    return header if isinstance(header, dict) else {}


def config_for(state: dict[str, torch.Tensor], shape: Mapping[str, Any], **overrides: Any) -> DepthProConfig:
    """The network a recorded `shape` describes (see `read_weights`), with an FOV head iff `state` has one."""
    return DepthProConfig.from_shape(shape, **({"fov_head": any(k.startswith("fov.") for k in state)} | overrides))


def _read_file(path: Path) -> tuple[object, dict[str, Any]]:
    """The object stored in a weights file and the network shape in its .safetensors header ({} otherwise)."""
    try:
        if path.suffix != ".safetensors":
            return torch.load(path, map_location="cpu", weights_only=True), {}
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get(SHAPE_KEY, "{}"))
            return {key: f.get_tensor(key) for key in f.keys()}, header if isinstance(header, dict) else {}
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"cannot read weights file {path}: {type(err).__name__}: {first_line}") from None


def _read_sharded_checkpoint(path: Path) -> dict:
    """The full state of a distributed (torch.distributed.checkpoint) checkpoint directory, gathered from its
    shards into one process, without running pickled code (see dp_train.runtime.sharded)."""
    from dp_train.runtime.sharded import is_sharded_checkpoint, read_sharded_checkpoint

    if not is_sharded_checkpoint(path):
        raise ValueError(f"{path} is a directory but not a sharded checkpoint (no .metadata file)")
    return read_sharded_checkpoint(path)


def _network_tensors(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Return the network's tensors from a loaded object (plain state dict or Lightning checkpoint), a LoRA run's
    low-rank factors merged into their weights (Apple's layout)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = {
            key[len(LIGHTNING_PREFIX) :]: value
            for key, value in obj["state_dict"].items()
            if key.startswith(LIGHTNING_PREFIX)
        }
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors (found {type(obj).__name__})")
    return merge_lora(obj)


def _shortlist(keys: list[str]) -> str:
    """Show the first few keys, and how many more there are."""
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def check_state_dict_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Raise one ValueError naming `source` when `state` does not fit `model`.

    Shape mismatches always count; missing and unexpected keys only when `strict`.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing: {_shortlist(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_shortlist(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_shortlist(mismatched)}")
    if problems:
        raise ValueError(f"{source} does not fit the model: " + "; ".join(problems))


def fit_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> dict[str, torch.Tensor]:
    """`state` made to load into `model`: weights trained at another ViT size (the only mismatches the ViTs'
    position embeddings and the FOV head's last kernel) get those resampled to `model`'s grid
    (dp_train.model.resample), said in one line on stderr; any other mismatch raises `check_state_dict_fits`' one
    ValueError naming `source`."""
    state, note = fit_to_grid(model, state)
    check_state_dict_fits(model, state, source, strict=strict)
    if note:
        log.warning("%s: %s", source, note)
    return state


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load network weights from `path` into `model` (any supported format), strict by default; weights trained at
    another ViT size load with their position embeddings resampled (`fit_state_dict`)."""
    state = fit_state_dict(model, read_state_dict(path), str(path), strict=strict)
    model.load_state_dict(state, strict=strict)


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the network's state dict as .safetensors or a torch file, atomically (temp + rename); a Depth Pro
    network's shape goes into a .safetensors header (see `save_state_dict`)."""
    config = getattr(model, "config", None)
    shape = network_shape({"network": dataclasses.asdict(config)}) if isinstance(config, DepthProConfig) else None
    save_state_dict(model.state_dict(), path, shape)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, shape: dict[str, Any] | None = None) -> None:
    """Write tensors as .safetensors or a torch file, atomically (temp + rename). A .safetensors file also records
    the network `shape` (see `network_shape`) in its header, for `read_weights`; a torch file holds the tensors
    only (Apple's layout, loadable by its code)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={SHAPE_KEY: json.dumps(shape)} if shape else None)
    else:
        torch.save(state, tmp)
    tmp.replace(path)
