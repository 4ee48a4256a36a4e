"""tools/plot_run.py turns CSVLogger metrics into a PNG and names a missing metric."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from tests.helpers.paths import TOOLS

sys.path.insert(0, str(TOOLS))
from plot_run import plot  # noqa: E402


def test_plot_writes_one_panel_per_metric_and_names_a_missing_one(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,train/loss,val/abs_rel\n0,1.0,\n1,0.5,\n2,0.25,0.3\n")
    out = tmp_path / "curve.png"
    plot(metrics, ["train/loss", "val/abs_rel"], out)
    width, height = Image.open(out).size
    assert width == 2 * 420 and height == 240
    with pytest.raises(ValueError, match="no values for metric 'val/delta1'"):
        plot(metrics, ["val/delta1"], out)
