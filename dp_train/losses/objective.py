"""The depth objective as a table: term -> weight and the kinds of sample it applies to.

A recipe (or a curriculum stage) sets one `Objective`. Each of its terms (the paper's five: MAE,
MSE, MAGE, MALE, MSGE, Sec. 3.2; and ours, `seam`, off unless weighted) is a `Term`: a weight, which
samples it applies to (metric / non-metric, real / synthetic) and whether it is scale-and-shift
invariant (SSI) on metric samples too. The paper's stages are rows of this table (Tab. 17, conditions of Tab. 11-13):

    stage 1 (1C): mae: 1.0                                   (SSI-MAE on non-metric samples)
                  mage: {weight: 1.0, real: false, ssi: true} (SSI-MAGE on synthetic samples only)
    stage 2 (2A): mae, mse, mage, male, msge: 1.0           (on synthetic metric data)

Fixed rules, not options: non-metric samples are always compared after SSI normalisation (their
ground truth has no scale or shift to match); sparse (LiDAR) samples never get derivative terms
nor the seam term (a derivative needs all its neighbours); the pixelwise terms (MAE, MSE) of real-world samples drop
the worst `trim_fraction` of pixels per image (Sec. 3.2), synthetic ones keep every pixel.

Choices the paper leaves open, and ours:
- SSI for derivative terms: each map is normalised (median, mean absolute deviation; as SSI-MAE,
  Ranftl et al.) once at full resolution, and then differentiated. Derivatives ignore the shift,
  so this divides each map's gradients by its own scale: one normalisation for every SSI term.
- Kernel normalisation: Scharr / 32 (unit gain on a ramp), see dp_train.losses.terms.
- Weights: 1.0 for every term in the paper recipes; the paper publishes none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from dp_train.losses.seams import seam_excess
from dp_train.losses.terms import derivative_losses, mae, mse, ssi_normalize
from dp_train.utils.ranges import Range

PIXEL_TERMS = {"mae": mae, "mse": mse}
"""Pixelwise terms: name -> per-image function (pred, target, valid, trim_fraction)."""
DERIVATIVE_TERMS = ("mage", "male", "msge")
"""Multi-scale derivative terms (Eq. 2), computed together by `derivative_losses`."""
WEIGHT = Range(0)
"""A term's weight: finite and >= 0."""
FLAGS = ("metric", "non_metric", "real", "synthetic", "ssi")
"""A `Term`'s true/false fields."""


def is_weight(value: Any) -> bool:
    """True for a number (not a bool) that is finite and >= 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and WEIGHT.holds(value)


@dataclass(frozen=True)
class Term:
    """One row of the objective table: a weight and the samples the term applies to."""

    weight: float = 1.0
    metric: bool = True
    """Applies to metric samples."""
    non_metric: bool = True
    """Applies to non-metric (relative) samples; they are always compared after SSI normalisation."""
    real: bool = True
    """Applies to real-world samples."""
    synthetic: bool = True
    """Applies to synthetic samples."""
    ssi: bool = False
    """Scale-and-shift invariant on metric samples too (the paper's stage-1 SSI-MAGE, condition 1C)."""

    def applies(self, metric: torch.Tensor, synthetic: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which samples of a batch this term applies to, from their kind flags."""
        by_metric = torch.where(metric, self.metric, self.non_metric)
        return by_metric & torch.where(synthetic, self.synthetic, self.real)


@dataclass(frozen=True)
class Objective:
    """The depth objective's table. A bare number is shorthand for `{weight: number}` (every sample).

    A dotted override of one field (`--model.loss.mage.ssi=true`) of a term given as a number starts
    from `Term`'s defaults (weight 1.0): give such a term as a mapping in the recipe. A recipe layered
    on another merges a term's mapping into the one below: write every field of a term you replace
    (recipes/ablations/ do).
    """

    mae: Term | float = 1.0
    """Mean absolute error on canonical inverse depth (Eq. 1)."""
    mse: Term | float = 0.0
    """Mean squared error (stage 2, condition 2A)."""
    mage: Term | float = 0.0
    """Mean absolute Scharr-gradient error over the pyramid (L_{S,1,M})."""
    male: Term | float = 0.0
    """Mean absolute Laplacian error over the pyramid (L_{L,1,M})."""
    msge: Term | float = 0.0
    """Mean squared Scharr-gradient error over the pyramid (L_{S,2,M})."""
    seam: Term | float = 0.0
    """Ours, not the paper's: the prediction's change across the patch encoder's window seams beyond the ground
    truth's (dp_train/losses/seams.py: `seam_excess`), against seams becoming visible in fine-tuning."""

    def check(self, key: str) -> None:
        """Raise ValueError `KEY.term=value: must be ...` for the first entry that is no weight >= 0 (a number) or
        true/false flag. Called by the module (`model.loss`) and each curriculum stage with their recipe key: inside
        jsonargparse's instantiation a failing Objective is reported as a ~1,000-character union error naming
        neither."""
        for path, value, expected in self.problems():
            raise ValueError(f"{key}.{path}={value!r}: must be {expected}")

    def problems(self) -> Iterator[tuple[str, Any, str]]:
        """(term or term.field, value, what it must be) for every entry that cannot be used (a recipe's null,
        negative or non-finite weight, a flag that is not true/false)."""
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if not isinstance(value, Term):
                if not is_weight(value):
                    yield name, value, f"a weight {WEIGHT} or a mapping {{weight, {', '.join(FLAGS)}}}"
                continue
            yield from ((f"{name}.{flag}", getattr(value, flag), "true or false")
                        for flag in FLAGS if not isinstance(getattr(value, flag), bool))
            if not is_weight(value.weight):
                yield f"{name}.weight", value.weight, f"a number {WEIGHT}"

    def terms(self) -> dict[str, Term]:
        """Every term as a `Term` (number shorthand expanded), by name."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: Term(weight=float(v)) if isinstance(v, (int, float)) else v for name, v in values.items()}

    def rows(self) -> dict[str, Term]:
        """The terms to compute: every weighted term, and MAE always (logged as the run's health signal)."""
        return {name: term for name, term in self.terms().items() if name == "mae" or term.weight}


def depth_objective(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    metric: torch.Tensor,
    synthetic: torch.Tensor,
    sparse: torch.Tensor,
    objective: Objective,
    trim_fraction: float = 0.2,
    scales: int = 6,
    seam_lines: Sequence[int] = (),
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The depth objective with per-sample term selection from `objective`'s table; `seam_lines` are the
    network's window seams (`model.network.seam_positions`) for the `seam` term (none: it measures nothing).

    Returns the batch terms {"loss", "mae", ...} (each averaged over the images it applies to;
    "loss" is their weighted sum) and the per-image weighted loss (B,) for per-source logging.
    """
    pred, target = pred.float(), target.float()
    maps = _SampleMaps(pred, target, valid, metric, sparse, scales, seam_lines)
    trim = torch.where(synthetic, 0.0, trim_fraction).to(pred)
    per_image = torch.zeros_like(trim)
    logged = {}
    for name, term in objective.rows().items():
        value, present = maps.term(name, term.ssi, trim)
        applies = (present & term.applies(metric, synthetic)).to(value.dtype)
        logged[name] = (value * applies).sum() / applies.sum().clamp(min=1)
        per_image = per_image + term.weight * value * applies
    logged["loss"] = sum(term.weight * logged[name] for name, term in objective.rows().items())
    return logged, per_image


class _SampleMaps:
    """A batch's prediction and target, raw and SSI-normalised, with derivative terms computed once per variant."""

    def __init__(self, pred, target, valid, metric, sparse, scales: int, seam_lines: Sequence[int] = ()) -> None:
        self.raw = (pred, target)
        self.normalised = (ssi_normalize(pred, valid), ssi_normalize(target, valid))
        self.valid, self.metric, self.sparse, self.scales = valid, metric, sparse, scales
        self.seam_lines = seam_lines
        self._derivatives: dict[bool, dict] = {}

    def pair(self, ssi: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred, target) per sample: normalised for non-metric samples, and for every sample when `ssi`."""
        if ssi:
            return self.normalised
        relative = (~self.metric).view(-1, 1, 1, 1)
        return tuple(torch.where(relative, n, r) for n, r in zip(self.normalised, self.raw))

    def term(self, name: str, ssi: bool, trim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image value of term `name` and whether it could be measured on each image."""
        if name in PIXEL_TERMS:
            return PIXEL_TERMS[name](*self.pair(ssi), self.valid, trim)
        if name == "seam":
            value, present = seam_excess(*self.pair(ssi), self.valid, self.seam_lines)
            return value, present & ~self.sparse
        if ssi not in self._derivatives:
            self._derivatives[ssi] = derivative_losses(*self.pair(ssi), self.valid, self.scales)
        value, present = self._derivatives[ssi][name]
        return value, present & ~self.sparse
