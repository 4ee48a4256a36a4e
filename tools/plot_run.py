"""Plot metrics of a run logged with Lightning's CSVLogger into one PNG (no plotting library needed).

    python tools/plot_run.py runs/x/run/version_0/metrics.csv --metrics train/loss val/abs_rel --out curve.png

One panel per metric, value against step, with the first and last values written
on the panel, so a README can show a known-good curve next to its final figures.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 420, 240, 48
LINE, AXIS, TEXT = (31, 119, 180), (90, 90, 90), (20, 20, 20)


def read_series(csv_path: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, in file order, skipping rows that lack it."""
    with open(csv_path, newline="") as fh:
        rows = [(int(r["step"]), float(r[metric])) for r in csv.DictReader(fh) if r.get(metric)]
    if not rows:
        raise ValueError(f"{csv_path} has no values for metric {metric!r}")
    return rows


def draw_panel(series: list[tuple[int, float]], title: str) -> Image.Image:
    """A line chart of one series with axes, its value range and first/last values."""
    panel = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(panel)
    steps, values = zip(*series)
    lo, hi = min(values), max(values)
    span_v, span_s = (hi - lo) or 1.0, (max(steps) - min(steps)) or 1

    def xy(step: int, value: float) -> tuple[float, float]:
        x = MARGIN + (step - min(steps)) / span_s * (PANEL_W - 2 * MARGIN)
        y = PANEL_H - MARGIN - (value - lo) / span_v * (PANEL_H - 2 * MARGIN)
        return x, y

    draw.rectangle([MARGIN, MARGIN, PANEL_W - MARGIN, PANEL_H - MARGIN], outline=AXIS)
    if len(series) > 1:
        draw.line([xy(s, v) for s, v in series], fill=LINE, width=2)
    for s, v in series[-1:] if len(series) > 1 else series:
        x, y = xy(s, v)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=LINE)
    draw.text((MARGIN, 12), f"{title}: {values[0]:.4g} -> {values[-1]:.4g}", fill=TEXT)
    draw.text((4, MARGIN - 6), f"{hi:.3g}", fill=AXIS)
    draw.text((4, PANEL_H - MARGIN - 6), f"{lo:.3g}", fill=AXIS)
    draw.text((MARGIN, PANEL_H - MARGIN + 8), f"step {min(steps)}", fill=AXIS)
    draw.text((PANEL_W - MARGIN - 60, PANEL_H - MARGIN + 8), f"step {max(steps)}", fill=AXIS)
    return panel


def plot(csv_path: Path, metrics: list[str], out: Path) -> None:
    """Write the panels of `metrics` side by side to `out`."""
    panels = [draw_panel(read_series(csv_path, m), m) for m in metrics]
    sheet = Image.new("RGB", (PANEL_W * len(panels), PANEL_H), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, (i * PANEL_W, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", type=Path, help="metrics.csv written by CSVLogger")
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        plot(args.csv, args.metrics, args.out)
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
