"""The ablation tables of tools/ablate.py: mean ± sd over seeds, paired differences and the paper's directions,
and every condition's held-out metrics in the column layout of the paper's Tab. 11-13.

Each check compares two conditions on one held-out metric. The runs of both conditions share their seeds
(same data order and augmentation), so the difference is taken per seed (paired) and summarised as mean ±
sd. A direction counts as reproduced when the mean difference has the paper's sign and its two-sided 95 %
t-interval excludes zero; as opposite when the interval excludes zero on the other side; otherwise as not
resolved at this number of seeds.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Two-sided 95 % quantiles of Student's t by degrees of freedom; beyond 10 the value at 10 (conservative)."""


@dataclass(frozen=True)
class Check:
    """One direction of the paper: `variant` against `base` on `metric` (a `<val source>/<metric>` key)."""

    title: str
    metric: str
    base: str
    variant: str
    expect: int
    """+1: the paper's variant scores higher; -1: lower; 0: about the same."""
    paper: str
    """What the paper measured (Tab. 11-14), as text."""


CHECKS = (
    Check("1. stage-1 SSI gradient loss on synthetic", "synth_val/boundary_f1", "1A", "1C", +1,
          "Hypersim F1 0.221 -> 0.442 (Tab. 11)"),
    Check("2. stage 2 vs stage 1 only, equal steps", "synth_val/boundary_f1", "1C", "2A", +1,
          "Hypersim F1 0.442 -> 0.465 (Tab. 11, 12)"),
    Check("2. stage 2 vs stage 1 only, equal steps", "synth_val/abs_rel", "1C", "2A", 0,
          "Hypersim AbsRel 0.235 -> 0.235 (Tab. 11, 12)"),
    Check("3. curriculum vs reversed, real-like", "real_val/abs_rel", "3C", "3A", -1,
          "Apolloscape AbsRel 0.712 -> 0.303 (Tab. 13)"),
    Check("3. curriculum vs reversed, real-like", "real_val/delta1", "3C", "3A", +1,
          "Apolloscape delta1 0.5 % -> 72.9 % (Tab. 13)"),
    Check("3. curriculum vs reversed, synthetic", "synth_val/abs_rel", "3C", "3A", -1,
          "Hypersim AbsRel 0.386 -> 0.235 (Tab. 13)"),
    Check("3. curriculum vs reversed, synthetic", "synth_val/delta1", "3C", "3A", +1,
          "Hypersim delta1 37.1 % -> 81.3 % (Tab. 13)"),
    Check("4. FOV head vs constant FOV", "synth_val/share_below_25", "constant FOV", "FOV head", +1,
          "FOV head delta25 78.2 % (Tab. 14; no constant baseline there)"),
)
ALIASES = {"3A": "2A"}
"""Conditions that are the same runs: the paper's 3A is its 2A (Tab. 13), and so is ours."""


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (NaN for one value) and count of finite values."""

    mean: float
    sd: float
    n: int

    def text(self, digits: int = 4) -> str:
        """`mean ± sd` (`mean` alone for one value, `n/a` for none)."""
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def summarise(values: list[float]) -> Summary:
    """Mean ± sample sd (n - 1) of the finite values; a metric a run did not log is NaN and left out."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return Summary(math.nan, math.nan, 0)
    sd = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return Summary(statistics.fmean(finite), sd, len(finite))


def verdict(diff: Summary, expect: int) -> str:
    """The paper's direction against a paired difference (see the module docstring)."""
    if diff.n < 2:
        return "no verdict (one seed)"
    half = T975[min(diff.n - 1, 10)] * diff.sd / math.sqrt(diff.n)
    resolved = abs(diff.mean) > half
    if expect == 0:
        return "yes (no resolved change)" if not resolved else "no (changes)"
    if not resolved:
        return "not resolved"
    return "yes" if (diff.mean > 0) == (expect > 0) else "no (opposite)"


def values(results: dict[str, list[dict[str, float]]], condition: str, metric: str) -> list[float]:
    """One metric of every seed's run of a condition (NaN where a run did not log it)."""
    return [run.get(metric, math.nan) for run in results[ALIASES.get(condition, condition)]]


def paired(results: dict[str, list[dict[str, float]]], check: Check) -> list[float]:
    """variant - base per seed; a condition with one run (the constant FOV) pairs with every seed."""
    base, variant = values(results, check.base, check.metric), values(results, check.variant, check.metric)
    if len(base) == 1:
        base = base * len(variant)
    return [v - b for v, b in zip(variant, base)]


@dataclass(frozen=True)
class Row:
    """One line of the directions table."""

    check: Check
    base: Summary
    variant: Summary
    diff: Summary
    verdict: str


def rows(results: dict[str, list[dict[str, float]]]) -> list[Row]:
    """Every check whose conditions were run."""
    out = []
    for check in CHECKS:
        names = {ALIASES.get(c, c) for c in (check.base, check.variant)}
        if not names <= results.keys():
            continue
        diff = summarise(paired(results, check))
        out.append(Row(check, summarise(values(results, check.base, check.metric)),
                       summarise(values(results, check.variant, check.metric)), diff, verdict(diff, check.expect)))
    return out


def markdown(table: list[Row]) -> str:
    """The directions as a Markdown table (mean ± sd over seeds; n = seeds with the metric)."""
    lines = ["| check | metric (held-out) | A | B | B - A, paired | n | paper (A -> B) | reproduced |",
             "|---|---|---|---|---|---:|---|---|"]
    for r in table:
        c = r.check
        lines.append(f"| {c.title} | {c.metric} | {c.base}: {r.base.text()} | {c.variant}: {r.variant.text()} | "
                     f"{r.diff.text()} | {r.diff.n} | {c.paper} | {r.verdict} |")
    return "\n".join(lines)


def as_json(table: list[Row]) -> list[dict]:
    """The directions as plain data (NaN becomes None)."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return {k: clean(v) for k, v in value.items()} if isinstance(value, dict) else value
    return [clean(asdict(r)) for r in table]


CONDITIONS = ("1A", "1C", "2A", "3C")
"""The depth conditions, one row each of the paper-layout table (2A is also the paper's 3A)."""


@dataclass(frozen=True)
class Column:
    """One column of the paper-layout table: `metric` (a `<val source>/<metric>` key) under `group`."""

    group: str
    label: str
    metric: str


PAPER_COLUMNS = (
    Column("synthetic", "AbsRel", "synth_val/abs_rel"),
    Column("synthetic", "δ1", "synth_val/delta1"),
    Column("synthetic", "F1", "synth_val/boundary_f1"),
    Column("relative", "AbsRel", "rel_val/abs_rel_aligned"),
    Column("relative", "δ1", "rel_val/delta1_aligned"),
    Column("real-like", "AbsRel", "real_val/abs_rel"),
    Column("real-like", "δ1", "real_val/delta1"),
)
"""Tab. 11-13's columns and their stand-ins: Hypersim (synthetic: AbsRel, δ1, boundary F1) -> the synthetic look of
the held-out scenes; HRWSI (relative: AbsRel, δ1 after per-image scale-and-shift alignment) -> the real-like look
read as relative (`metric: false`); Apolloscape (real: AbsRel, δ1) -> the real-like look, metric. The relative
columns have no direction in CHECKS: the project's audit does not have the paper's HRWSI numbers."""
CAPTION = ("Per condition, in the columns of the paper's Tab. 11-13 (held-out scenes, mean ± sd over seeds): "
           "synthetic = synth_val in Hypersim's place; relative = rel_val, the real-like look read as relative and "
           "aligned per image by least-squares scale and shift, in HRWSI's; real-like = real_val in Apolloscape's.")
"""The paper-layout table's caption: the stand-in of each column group."""


@dataclass(frozen=True)
class ConditionRow:
    """One line of the paper-layout table: a condition's mean ± sd over its runs, per column."""

    condition: str
    runs: int
    cells: tuple[Summary, ...]
    """One per PAPER_COLUMNS entry, in order."""


def condition_rows(results: dict[str, list[dict[str, float]]]) -> list[ConditionRow]:
    """Every depth condition that was run, in the paper's order; a metric no run logged is Summary n = 0."""
    return [ConditionRow(name, len(results[name]),
                         tuple(summarise(values(results, name, c.metric)) for c in PAPER_COLUMNS))
            for name in CONDITIONS if name in results]


def condition_markdown(table: list[ConditionRow]) -> str:
    """The paper-layout table in Markdown: a caption naming each group's stand-in, then one row per condition
    (mean ± sd over seeds, `n/a` where no run logged the metric; n = runs)."""
    lines = [CAPTION, "",
             "| condition | " + " | ".join(f"{c.group} {c.label}" for c in PAPER_COLUMNS) + " | n |",
             "|---|" + "---|" * len(PAPER_COLUMNS) + "---:|"]
    for r in table:
        name = "2A (= 3A)" if r.condition == "2A" else r.condition
        lines.append(f"| {name} | " + " | ".join(cell.text() for cell in r.cells) + f" | {r.runs} |")
    return "\n".join(lines)


def conditions_json(table: list[ConditionRow]) -> list[dict]:
    """The paper-layout table as plain data: per condition, `{group: {metric key: {mean, sd, n}}}` (NaN -> None)."""
    out = []
    for r in table:
        entry: dict = {"condition": r.condition, "runs": r.runs}
        for column, cell in zip(PAPER_COLUMNS, r.cells):
            entry.setdefault(column.group, {})[column.metric] = {
                k: (v if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in asdict(cell).items()}
        out.append(entry)
    return out
