"""Learning-rate schedules: LR multipliers per optimizer step, after a linear warm-up.

`constant_step` is the paper's (App. C.4, Tab. 16): 1 % linear warm-up, 80 % constant, the last 19 %
at x0.1. `cosine` (warm-up, then cosine decay to `min_ratio`) stays available. Each is a pure
function of the optimizer step and the steps at which curriculum stages with `reset_lr` restart it
(`restarts`, known when the schedule is built): the phases divide each stage's own steps, as when
the stages run as separate jobs. They are callable objects (not closures), so LambdaLR saves their
settings in checkpoints; nothing changes them during a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

SCHEDULES = ("constant_step", "cosine")
"""Accepted `model.lr_schedule` values."""


class Warmup:
    """Linear warm-up over `warmup` steps (an int) or that share of the run (a float below 1), restartable."""

    def __init__(self, warmup: int | float, total_steps: int, restarts: Sequence[int] = ()) -> None:
        if isinstance(warmup, float) and not 0.0 <= warmup < 1.0:
            raise ValueError(f"model.warmup_steps={warmup}: a share of the run must be in [0, 1), "
                             "or give steps as an int")
        if warmup < 0:
            raise ValueError(f"model.warmup_steps={warmup} must be >= 0")
        self.warmup = warmup
        self.total_steps = max(total_steps, 1)
        self.restarts = sorted(set(restarts))
        """Steps at which a curriculum stage restarts the schedule (warm-up first)."""

    def position(self, step: int) -> tuple[int, int, int]:
        """(steps since the stage's (re)start, steps from the (re)start to the stage's end, warm-up steps)."""
        start = max([0] + [r for r in self.restarts if r <= step])
        end = min([r for r in self.restarts if r > start] + [self.total_steps])
        step, span = step - start, max(end - start, 1)
        warmup = round(self.warmup * span) if isinstance(self.warmup, float) else self.warmup
        return step, span, warmup

    def __call__(self, step: int) -> float:
        """The LR multiplier of optimizer step `step`."""
        step, span, warmup = self.position(step)
        if step < warmup:
            return (step + 1) / warmup
        return self.after_warmup(step, span, warmup)

    def after_warmup(self, step: int, span: int, warmup: int) -> float:
        """The multiplier once warmed up (subclasses)."""
        raise NotImplementedError


class WarmupCosine(Warmup):
    """Linear warm-up, then cosine decay to `min_ratio` at the end of the run."""

    def __init__(self, warmup: int | float, total_steps: int, min_ratio: float, restarts: Sequence[int] = ()) -> None:
        super().__init__(warmup, total_steps, restarts)
        self.min_ratio = min_ratio

    def after_warmup(self, step: int, span: int, warmup: int) -> float:
        progress = min((step - warmup) / max(span - warmup, 1), 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupConstantStep(Warmup):
    """Linear warm-up, the peak LR until `decay_at` of the run, then `min_ratio` x the peak (Tab. 16)."""

    def __init__(self, warmup: int | float, total_steps: int, min_ratio: float, decay_at: float,
                 restarts: Sequence[int] = ()) -> None:
        super().__init__(warmup, total_steps, restarts)
        if not 0.0 < decay_at <= 1.0:
            raise ValueError(f"model.decay_at={decay_at} must be a share of the run in (0, 1]")
        self.min_ratio = min_ratio
        self.decay_at = decay_at

    def after_warmup(self, step: int, span: int, warmup: int) -> float:
        return 1.0 if step < round(self.decay_at * span) else self.min_ratio


def build_schedule(kind: str, warmup: int | float, total_steps: int, min_ratio: float, decay_at: float,
                   restarts: Sequence[int] = ()) -> Warmup:
    """The schedule named `kind` (one of SCHEDULES) for a run of `total_steps` optimizer steps, restarted
    (warm-up first) at each step of `restarts`."""
    if kind == "cosine":
        return WarmupCosine(warmup, total_steps, min_ratio, restarts)
    if kind == "constant_step":
        return WarmupConstantStep(warmup, total_steps, min_ratio, decay_at, restarts)
    raise ValueError(f"model.lr_schedule={kind!r}: choose one of {SCHEDULES}")


LEGACY_STATE = ("offset", "ends")
"""Schedule attributes the curriculum patched during a run before dp_train 0.2; checkpoints may carry them."""


def drop_legacy_state(checkpoint: dict[str, Any]) -> None:
    """Remove `LEGACY_STATE` from a checkpoint's LambdaLR states before Lightning restores them, so a checkpoint
    of an earlier version resumes on the schedule its curriculum defines (the same LRs: the restarts it
    patched in are the ones the schedule is now built with)."""
    for scheduler in checkpoint.get("lr_schedulers", []):
        for state in scheduler.get("lr_lambdas", []):
            if isinstance(state, dict):
                for key in LEGACY_STATE:
                    state.pop(key, None)
