"""`GuardedSelection`: fine-tuning that keeps what the starting weights knew.

Fine-tuning on one domain can cost zero-shot quality elsewhere without anything saying so. The guard sets
(`data.guard_sources`: benchmarks the run never trains on) are validated with the in-domain sets
(`data.val_sources`). The callback keeps each source's metric at the start (the starting weights, validated once
before training: `fit` does it when the recipe has this callback) and, at every validation after it, logs

- `guard/in_domain_gain`: the relative improvement of the in-domain sets' mean metric over the start
  (0.1: 10 % better; negative: worse),
- `guard/<source>/change`: each guard set's relative worsening (0.03: 3 % worse than at the start),

and saves `<dirpath>/<filename>.ckpt` when the in-domain mean is the best so far among validations where every
guard set stays within `tolerance` of its start. The start and the best travel in the checkpoint (a resumed run
compares with the same start).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

GUARD_METRICS = {"abs_rel": "min", "rmse": "min", "log10": "min", "silog": "min", "delta1": "max", "delta2": "max",
                 "delta3": "max", "boundary_f1": "max"}
"""Validation metrics the guard can compare (logged per source as `val/<source>/<metric>`) -> "min" when lower
is better, "max" when higher is."""


def relative_worsening(start: float, value: float, mode: str) -> float:
    """How much worse `value` is than `start`, relative to it: (value - start) / start for a metric to
    minimise, (start - value) / start for one to maximise; NaN when the start is 0 or not finite."""
    if not math.isfinite(start) or start == 0:
        return math.nan
    change = (value - start) / abs(start)
    return change if mode == "min" else -change


class GuardedSelection(Callback):
    """Logs in-domain gain and guard change against the start; keeps the best in-domain checkpoint whose guard
    sets stay within `tolerance` of the start.

    Args:
        metric: the validation metric compared, one of `GUARD_METRICS` (`boundary_f1` needs
            `model.boundary_metrics`).
        tolerance: the relative worsening a guard set may show (0.02: 2 % worse than at the start).
        dirpath: folder of the kept checkpoint (None: the first ModelCheckpoint's, else
            `<default_root_dir>/checkpoints`).
        filename: the kept checkpoint's name, without `.ckpt`.
    """

    def __init__(self, metric: str = "abs_rel", tolerance: float = 0.02, dirpath: str | None = None,
                 filename: str = "guarded-best") -> None:
        if metric not in GUARD_METRICS:
            raise ValueError(f"trainer.callbacks: GuardedSelection metric={metric!r}: choose one of {list(GUARD_METRICS)}")
        if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"trainer.callbacks: GuardedSelection tolerance={tolerance!r}: must be a number >= 0")
        self.metric, self.mode, self.tolerance = metric, GUARD_METRICS[metric], float(tolerance)
        self.dirpath, self.filename = dirpath, filename
        self.start: dict[str, float] | None = None
        self.best: float | None = None
        self.best_step: int | None = None

    # ------------------------------------------------------------------ hooks

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the start (the first validation, before training), or compare with it, log and keep."""
        if trainer.sanity_checking:
            return
        in_domain, guards = source_split(trainer)
        values = self._values(trainer, in_domain + guards)
        if self.start is None:
            self.start = values
            if trainer.state.fn == "fit" and trainer.is_global_zero:
                log.warning("GuardedSelection: no validation of the starting weights; comparing with the first "
                            "validation (step %d) instead", trainer.global_step)
            return
        if trainer.state.fn != "fit":
            return
        gain = -relative_worsening(self._mean(self.start, in_domain), self._mean(values, in_domain), self.mode)
        changes = {name: relative_worsening(self.start[name], values[name], self.mode) for name in guards}
        kept = self._keep(trainer, self._mean(values, in_domain), changes)
        logs = {"guard/in_domain_gain": gain} | {f"guard/{name}/change": c for name, c in changes.items()}
        if trainer.logger is not None:
            trainer.logger.log_metrics(logs, step=trainer.global_step)
        if trainer.is_global_zero:
            log.info("%s", self._summary(gain, changes, kept))

    def _keep(self, trainer: L.Trainer, in_domain: float, changes: dict[str, float]) -> bool:
        """Save the checkpoint when every guard is within tolerance and the in-domain mean is the best so far."""
        within = all(math.isfinite(c) and c <= self.tolerance for c in changes.values())
        better = self.best is None or (in_domain < self.best if self.mode == "min" else in_domain > self.best)
        if not (within and better and math.isfinite(in_domain)):
            return False
        self.best, self.best_step = in_domain, trainer.global_step
        trainer.save_checkpoint(self.checkpoint_path(trainer))
        return True

    # ------------------------------------------------------------------ helpers

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """Where the kept checkpoint goes (see `dirpath`)."""
        dirpath = self.dirpath or getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(dirpath or Path(trainer.default_root_dir) / "checkpoints") / f"{self.filename}.ckpt"

    def _values(self, trainer: L.Trainer, names: list[str]) -> dict[str, float]:
        """This validation's metric per source (NaN where a source logged none, e.g. no image with depth)."""
        metrics = trainer.callback_metrics
        return {name: float(metrics.get(f"val/{name}/{self.metric}", math.nan)) for name in names}

    @staticmethod
    def _mean(values: dict[str, float], names: list[str]) -> float:
        return sum(values[name] for name in names) / len(names)

    def _summary(self, gain: float, changes: dict[str, float], kept: bool) -> str:
        guards = ", ".join(f"{name} {100 * c:+.1f} %" for name, c in changes.items())
        where = f"kept as {self.filename}.ckpt" if kept else (
            f"best kept: step {self.best_step}" if self.best_step is not None else "nothing kept yet")
        return (f"guard: in-domain {self.metric} {100 * gain:+.1f} % better than the start; guard sets worse by "
                f"{guards} (tolerance {100 * self.tolerance:.1f} %); {where}")

    def state_dict(self) -> dict[str, Any]:
        """The start values and the best kept so far (kept in the checkpoint)."""
        return {"start": self.start, "best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the start values and the best kept so far."""
        self.start = state_dict.get("start")
        self.best = state_dict.get("best")
        self.best_step = state_dict.get("best_step")


def source_split(trainer: L.Trainer) -> tuple[list[str], list[str]]:
    """(in-domain validation source names, guard source names) of the trainer's datamodule; a ValueError when
    either is empty (the guard compares the two)."""
    guards = trainer.datamodule.source_names("guard")
    in_domain = [name for name in trainer.datamodule.source_names("val") if name not in guards]
    if not in_domain or not guards:
        raise ValueError("GuardedSelection needs data.val_sources (in-domain) and data.guard_sources (sets the run "
                         "never trains on)")
    return in_domain, guards
