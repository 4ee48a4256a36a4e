"""Checkpoints as the checkpoint-reading tests write them: a pickled payload that runs code if unpickled, and a
sharded (FSDP) checkpoint directory as Lightning's ModelParallelStrategy writes it."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

HPARAMS = {"preset": "tiny", "network": {"vit_img_size": 128}}
"""The hyper-parameters `write_sharded` records in `meta.pt` unless told otherwise."""


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class Holder(torch.nn.Module):
    """Stands for the LightningModule: the network under `net`, as Lightning saves it."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net


def write_sharded(path: Path, holder: Holder, optimizer: torch.optim.Optimizer, lr: object = None,
                  meta: object = None) -> Path:
    """A checkpoint directory as Lightning's ModelParallelStrategy writes it (`lr`, `meta`: replace what it holds)."""
    optimizer_state = get_optimizer_state_dict(holder, optimizer)
    if lr is not None:
        optimizer_state["param_groups"][0]["lr"] = lr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "no process group, assuming a single process"
        dcp.save({"state_dict": get_model_state_dict(holder), "optimizer_0": optimizer_state}, checkpoint_id=path,
                 no_dist=True)
    torch.save({"hyper_parameters": HPARAMS, "global_step": 7} if meta is None else meta, path / "meta.pt")
    return path
