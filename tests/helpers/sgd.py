"""A callback that trains with plain SGD instead of the recipe's optimizer and records each step's gradient
norm, so that multi-process runs can be compared with one process step by step.

Adam divides every gradient by its own running magnitude: a parameter whose gradient is ~0 moves by ±lr
whichever way rounding tips it, so two runs that differ only in summation order drift apart by O(lr) per
step. SGD moves each parameter by lr x gradient: rounding differences stay rounding-sized."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch


class PlainSGD(L.Callback):
    """Replace the optimizer (and LR schedule) by SGD at `lr` when training starts; append the global
    gradient norm of every step, as the optimizer sees it (after the ranks' gradients are averaged), to
    `out_dir/grad_norm_rank{R}.txt`."""

    def __init__(self, lr: float, out_dir: str) -> None:
        self.lr, self.out_dir = lr, Path(out_dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        trainer.strategy.optimizers = [torch.optim.SGD(trainable, lr=self.lr)]
        trainer.strategy.lr_scheduler_configs = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        squares = sum(full(p.grad).double().pow(2).sum() for p in pl_module.parameters() if p.grad is not None)
        with open(self.out_dir / f"grad_norm_rank{trainer.global_rank}.txt", "a") as fh:
            fh.write(f"{float(squares) ** 0.5!r}\n")


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a DTensor); a plain tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
