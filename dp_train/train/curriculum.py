"""The training curriculum: stages that switch the data mixture and the objective at given steps."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from dp_train.losses import Objective


@dataclass(frozen=True)
class Stage:
    """One phase of training, starting at optimizer step `start_step`.

    `mixture` ({source name: weight}; unnamed train sources get 0) and `loss`
    default to the previous stage's (the first stage: the datamodule's source
    weights and the module's objective, dp_train/losses/objective.py). `reset_lr`
    restarts the LR schedule (warm-up first) at `start_step`: the schedule is built
    knowing these steps (`lr_restarts`, dp_train/train/schedules.py).
    """

    name: str
    start_step: int
    mixture: dict[str, float] | None = None
    loss: Objective | None = None
    reset_lr: bool = False

    def __post_init__(self) -> None:
        """Refuse a loss table entry that is no term, naming the stage (see `Objective.check`)."""
        if self.loss is not None:
            self.loss.check(f"trainer.callbacks: CurriculumCallback stage {self.name!r}: loss")


class CurriculumCallback(L.Callback):
    """Switches data mixture and loss weights between stages; the stage survives checkpoint/resume.

    The data side is exact to the batch: the stream receives the whole schedule
    up front and every worker picks the mixture from the global batch index.
    """

    def __init__(self, stages: list[Stage]) -> None:
        stages = sorted(stages, key=lambda s: s.start_step)
        if not stages or stages[0].start_step != 0:
            raise ValueError("curriculum: the first stage must start at step 0")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"curriculum: stage names must be unique, got {names}")
        if len({s.start_step for s in stages}) != len(stages):
            raise ValueError("curriculum: two stages start at the same step")
        self.stages = stages
        self.entered = 0
        """Index of the last stage whose start was passed (saved in checkpoints)."""
        self._applied: int | None = None
        self._base_loss: Objective | None = None

    def check_mixtures(self, sources: list[str]) -> None:
        """Every stage's mixture names only training `sources`, with weights >= 0 of which one is positive: a
        ValueError naming the stage, otherwise found only when training reaches the stage's setup."""
        for stage in self.stages:
            mixture = stage.mixture or {}
            unknown = sorted(set(mixture) - set(sources))
            where = f"trainer.callbacks: CurriculumCallback stage {stage.name!r}: mixture"
            if unknown:
                raise ValueError(f"{where} names unknown source(s) {', '.join(map(repr, unknown))}; "
                                 f"data.train_sources are {', '.join(map(repr, sources))}")
            if mixture and not (all(0 <= w < float("inf") for w in mixture.values()) and any(mixture.values())):
                raise ValueError(f"{where} weights must be >= 0 and not all 0, got {mixture}")

    def stage_at(self, step: int) -> int:
        """Index of the stage in force at optimizer step `step`."""
        return max(i for i, s in enumerate(self.stages) if s.start_step <= step)

    def loss_at(self, index: int) -> Objective:
        """The objective in force in stage `index` (inherited from earlier stages when unset)."""
        for stage in reversed(self.stages[: index + 1]):
            if stage.loss is not None:
                return stage.loss
        return self._base_loss

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the train stream the mixture schedule (in batches) before any worker starts."""
        self._base_loss = pl_module.loss_weights
        if stage != "fit" or trainer.datamodule is None or trainer.datamodule.train_stream is None:
            return
        datamodule = trainer.datamodule
        weights = {s.name: s.weight for s in datamodule.train_sources}
        schedule = []
        for stage_ in self.stages:
            weights = stage_.mixture if stage_.mixture is not None else weights
            schedule.append((stage_.start_step * trainer.accumulate_grad_batches, weights))
        datamodule.set_mixture_schedule(schedule)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        """Enter a new stage at its first step; re-apply the stage's loss after a resume."""
        index = self.stage_at(trainer.global_step)
        if index != self._applied:
            pl_module.loss_weights = self.loss_at(index)
            self._applied = index
        if index != self.entered:
            self.entered = index
            rank_zero_info(f"curriculum: entering stage {self.stages[index].name!r} at step {trainer.global_step}")
        pl_module.log("curriculum/stage", float(index), prog_bar=False, batch_size=1)

    def state_dict(self) -> dict:
        """The last stage entered."""
        return {"entered": self.entered}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the last stage entered (so a resume does not re-run the switch)."""
        self.entered = state_dict["entered"]


def lr_restarts(callbacks: list) -> list[int]:
    """The steps at which the trainer's curriculum restarts the LR schedule (its `reset_lr` stages' start steps);
    none without a curriculum."""
    return [stage.start_step for callback in callbacks if isinstance(callback, CurriculumCallback)
            for stage in callback.stages if stage.reset_lr]
