"""Learning-rate schedules: LR multipliers per optimizer step, after a linear warm-up.

`constant_step` is the paper's (App. C.4, Tab. 16): 1 % linear warm-up, 80 % constant, the last 19 %
at x0.1. `cosine` (warm-up, then cosine decay to `min_ratio`) stays available. Both are callable
objects (not closures), so LambdaLR saves their state, `offset` and `ends` included, in
checkpoints. A curriculum stage with `reset_lr` restarts them at its first step (`offset`), and
the curriculum lists those steps in `ends` up front: the phases then divide each stage's own
steps, as when the stages run as separate jobs.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant_step", "cosine")
"""Accepted `model.lr_schedule` values."""


class Warmup:
    """Linear warm-up over `warmup` steps (an int) or that share of the run (a float below 1), restartable."""

    def __init__(self, warmup: int | float, total_steps: int) -> None:
        if isinstance(warmup, float) and not 0.0 <= warmup < 1.0:
            raise ValueError(f"model.warmup_steps={warmup}: a share of the run must be in [0, 1), or give steps as an int")
        if warmup < 0:
            raise ValueError(f"model.warmup_steps={warmup} must be >= 0")
        self.warmup = warmup
        self.total_steps = max(total_steps, 1)
        self.offset = 0
        """The step the schedule last (re)started at."""
        self.ends: list[int] = []
        """Steps at which a later stage restarts the schedule: the current phases end at the next one."""

    def position(self, step: int) -> tuple[int, int, int]:
        """(steps since the (re)start, steps from the (re)start to the stage's end, warm-up steps)."""
        end = min([e for e in self.ends if e > self.offset] + [self.total_steps])
        step, span = step - self.offset, max(end - self.offset, 1)
        warmup = round(self.warmup * span) if isinstance(self.warmup, float) else self.warmup
        return step, span, warmup

    def __call__(self, step: int) -> float:
        step, span, warmup = self.position(step)
        if step < warmup:
            return (step + 1) / warmup
        return self.after_warmup(step, span, warmup)

    def after_warmup(self, step: int, span: int, warmup: int) -> float:
        """The multiplier once warmed up (subclasses)."""
        raise NotImplementedError


class WarmupCosine(Warmup):
    """Linear warm-up, then cosine decay to `min_ratio` at the end of the run."""

    def __init__(self, warmup: int | float, total_steps: int, min_ratio: float) -> None:
        super().__init__(warmup, total_steps)
        self.min_ratio = min_ratio

    def after_warmup(self, step: int, span: int, warmup: int) -> float:
        progress = min((step - warmup) / max(span - warmup, 1), 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupConstantStep(Warmup):
    """Linear warm-up, the peak LR until `decay_at` of the run, then `min_ratio` x the peak (Tab. 16)."""

    def __init__(self, warmup: int | float, total_steps: int, min_ratio: float, decay_at: float) -> None:
        super().__init__(warmup, total_steps)
        if not 0.0 < decay_at <= 1.0:
            raise ValueError(f"model.decay_at={decay_at} must be a share of the run in (0, 1]")
        self.min_ratio = min_ratio
        self.decay_at = decay_at

    def after_warmup(self, step: int, span: int, warmup: int) -> float:
        return 1.0 if step < round(self.decay_at * span) else self.min_ratio


def build_schedule(kind: str, warmup: int | float, total_steps: int, min_ratio: float, decay_at: float) -> Warmup:
    """The schedule named `kind` (one of SCHEDULES) for a run of `total_steps` optimizer steps."""
    if kind == "cosine":
        return WarmupCosine(warmup, total_steps, min_ratio)
    if kind == "constant_step":
        return WarmupConstantStep(warmup, total_steps, min_ratio, decay_at)
    raise ValueError(f"model.lr_schedule={kind!r}: choose one of {SCHEDULES}")
