"""The conversion report: per-sample statistics (SampleStats, sample_stats), their summary over a run
(Report: depth percentiles from a log-depth histogram, valid-pixel share, focal length and FOV), warnings
about unusual statistics, and writing the skip list, `{prefix}.report.json` and the printed summary.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from dp_train.shards import write_text_atomic

LOG10_LO, LOG10_HI, BINS_PER_DECADE = -6, 6, 200  # depth histogram for percentiles (~1.2% bins)
N_BINS = (LOG10_HI - LOG10_LO) * BINS_PER_DECADE


@dataclass
class SampleStats:
    """What the report needs from one converted sample."""

    width: int
    height: int
    n_valid: int
    d_min: float
    d_max: float
    hist: np.ndarray
    f_px: float | None


def sample_stats(values: np.ndarray, width: int, height: int, f_px: float | None) -> SampleStats:
    """Statistics of one sample's valid depth values (none: a sample without depth)."""
    if not values.size:
        return SampleStats(width, height, 0, math.inf, -math.inf, np.zeros(N_BINS, np.int64), f_px)
    log = np.log10(values.astype(np.float64))
    bins = np.clip(((log - LOG10_LO) * BINS_PER_DECADE).astype(np.int64), 0, N_BINS - 1)
    hist = np.bincount(bins, minlength=N_BINS)
    return SampleStats(width, height, values.size, float(values.min()), float(values.max()), hist, f_px)


def _sig(x: float) -> float:
    """x rounded to 4 significant digits."""
    return float(f"{x:.4g}")


def _span(values: list[float]) -> dict[str, float] | None:
    """{"min", "max"} of values (4 significant digits), None if empty."""
    return {"min": _sig(min(values)), "max": _sig(max(values))} if values else None


def hfov_deg(width: int, f_px: float) -> float:
    """Horizontal field of view in degrees of a pinhole camera: 2 atan(W / 2f)."""
    return math.degrees(2 * math.atan(width / (2 * f_px)))


class Report:
    """Accumulates SampleStats and summarises them."""

    def __init__(self) -> None:
        self.hist = np.zeros(N_BINS, np.int64)
        self.d_min, self.d_max = math.inf, -math.inf
        self.valid_shares: list[float] = []
        self.focals: list[float] = []
        self.fovs: list[float] = []
        self.sizes: set[tuple[int, int]] = set()

    def add(self, s: SampleStats) -> None:
        """Fold in one sample."""
        self.hist += s.hist
        self.d_min, self.d_max = min(self.d_min, s.d_min), max(self.d_max, s.d_max)
        self.valid_shares.append(s.n_valid / (s.width * s.height))
        self.sizes.add((s.width, s.height))
        if s.f_px is not None:
            self.focals.append(s.f_px)
            self.fovs.append(hfov_deg(s.width, s.f_px))

    def percentile(self, q: float) -> float:
        """Approximate q-th percentile of all valid depth values (to one histogram bin)."""
        cum = np.cumsum(self.hist)
        i = int(np.searchsorted(cum, max(1.0, q / 100 * cum[-1])))
        value = 10 ** (LOG10_LO + (i + 0.5) / BINS_PER_DECADE)
        return min(max(value, self.d_min), self.d_max)

    def summary(self) -> dict[str, Any]:
        """Depth, valid-share, focal and FOV statistics (None where there is no data)."""
        if not self.valid_shares:
            return {"depth": None, "mean_valid_share": None, "f_px": None, "hfov_deg": None,
                    "image_sizes": []}
        depth = {"min": _sig(self.d_min), "p1": _sig(self.percentile(1)),
                 "p50": _sig(self.percentile(50)), "p99": _sig(self.percentile(99)),
                 "max": _sig(self.d_max)}
        return {
            "depth": depth,
            "mean_valid_share": _sig(float(np.mean(self.valid_shares))),
            "f_px": _span(self.focals),
            "hfov_deg": _span(self.fovs),
            "image_sizes": [f"{w}x{h}" for w, h in sorted(self.sizes)],
        }


def unusual_statistics(summary: dict[str, Any], metric: bool) -> list[str]:
    """Warnings about unusual statistics (wrong --units or focal length)."""
    hints = []
    depth, fov = summary["depth"], summary["hfov_deg"]
    if metric and depth and not 0.1 <= depth["p50"] <= 500:
        hints.append(f"median depth {depth['p50']} m is unusual: check --units")
    if fov and (fov["min"] < 10 or fov["max"] > 160):
        hints.append(f"horizontal FOV {fov['min']}-{fov['max']} deg is unusual: check the focal lengths")
    return hints


def _print_report(report: dict[str, Any], skipped: list[tuple[str, str]], max_listed: int = 20) -> None:
    """Human-readable closing report on stdout."""
    r = report
    unit = "m" if r["metric"] else r["units"]
    print(f"dataset {r['dataset']!r}: {r['samples_written']} samples written in {r['shards']} shard(s), "
          f"{r['samples_skipped']} skipped")
    if r["depth"]:
        d = r["depth"]
        print(f"  depth [{unit}]: min {d['min']}  p1 {d['p1']}  p50 {d['p50']}  p99 {d['p99']}  max {d['max']}")
        print(f"  mean valid-pixel share: {100 * r['mean_valid_share']:.1f}%")
        print(f"  image sizes: {', '.join(r['image_sizes'])}")
    if r["f_px"]:
        f, fov = r["f_px"], r["hfov_deg"]
        print(f"  focal length: {f['min']} - {f['max']} px -> horizontal FOV {fov['min']} - {fov['max']} deg")
    else:
        print("  focal length: unknown (no --f-px / --focal-file)")
    for hint in r["warnings"]:
        print(f"  warning: {hint}")
    for stem, reason in skipped[:max_listed]:
        print(f"  skipped {stem}: {reason}")
    if len(skipped) > max_listed:
        print(f"  ... {len(skipped) - max_listed} more skipped")
    print(f"  index: {r['index']}\n  report: {r['report']}\n  skipped list: {r['skipped_list']}")


def save_report(result: dict[str, Any], skipped: list[tuple[str, str]]) -> int:
    """Write the skip list and report named in `result`, print the summary; 1 if nothing was written."""
    write_text_atomic(result["skipped_list"], "".join(f"{s}\t{r}\n" for s, r in skipped))
    write_text_atomic(result["report"], json.dumps(result, indent=2) + "\n")
    _print_report(result, skipped)
    if result["samples_written"] == 0:
        print(f"error: every sample was skipped (see {result['skipped_list']})", file=sys.stderr)
        return 1
    return 0
