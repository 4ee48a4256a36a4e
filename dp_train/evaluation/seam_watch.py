"""`SeamWatch`: a warning when fine-tuning makes the patch encoder's window seams visible.

The validation metrics include each source's seam ratio (`val/<source>/seam_ratio`, or `val/seam_ratio` with one
source; dp_train/evaluation/seams.py). The callback remembers each one's value at the first validation of the run
(the starting point: the released or previous weights, when validation runs before training or at its first
interval) and warns once, on rank zero, when a later validation's value exceeds it by more than `factor`. The
first values travel in the checkpoint, so a resumed run compares with the same start.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def seam_keys(metrics: dict[str, Any]) -> list[str]:
    """The logged seam ratio keys of the validation sources: `val/<source>/seam_ratio` per source, or
    `val/seam_ratio` when that is the only one (with several sources it repeats the first)."""
    keys = [key for key in metrics if key.startswith("val/") and key.endswith("/seam_ratio")]
    return [key for key in keys if key != "val/seam_ratio"] if len(keys) > 1 else keys


class SeamWatch(Callback):
    """Warns when a validation source's seam ratio rises more than `factor` times above its first value.

    Args:
        factor: how many times its first value a seam ratio may reach before the warning (> 1).
    """

    def __init__(self, factor: float = 1.25) -> None:
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
            raise ValueError(f"trainer.callbacks: SeamWatch factor={factor!r}: must be a number above 1")
        self.factor = factor
        self.first: dict[str, float] = {}
        self.warned: set[str] = set()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compare this validation's seam ratios with the first ones (after the sanity check, which is not one)."""
        if trainer.sanity_checking:
            return
        for key in seam_keys(trainer.callback_metrics):
            value = float(trainer.callback_metrics[key])
            if not math.isfinite(value):
                continue
            first = self.first.setdefault(key, value)
            if value > self.factor * first and key not in self.warned:
                self.warned.add(key)
                if trainer.is_global_zero:
                    log.warning("%s rose from %.3f to %.3f (x%.2f, above SeamWatch's x%g) at step %d: the patch "
                                "encoder's window seams are becoming visible in the depth (docs/evaluation.md, "
                                "seam ratio)", key, first, value, value / first, self.factor, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        """The first values and the keys already warned about (kept in the checkpoint)."""
        return {"first": dict(self.first), "warned": sorted(self.warned)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the first values and the warnings given."""
        self.first = dict(state_dict.get("first", {}))
        self.warned = set(state_dict.get("warned", ()))
