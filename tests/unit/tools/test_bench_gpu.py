"""tools/bench_gpu.py in its CPU mode, as CI runs it so that the device check never rots: every section writes its
figures, and the stage-2 fit smoke's loss is finite and falls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.cli import child_env
from tests.helpers.paths import REPO, TOOLS


@pytest.mark.slow
def test_the_device_check_runs_on_cpu_and_the_fit_smoke_learns(tmp_path):
    command = [sys.executable, str(TOOLS / "bench_gpu.py"), "--preset", "tiny", "--vit-img-size", "128",
               "--out", str(tmp_path), "--batches", "1", "--steps", "1", "--fit-steps", "10",
               "--levers", "reference", "channels_last", "--budget-s", "300"]
    proc = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert [note.split(":")[0] for note in report["notes"]] == ["planned"], report["notes"]  # nothing skipped or failed
    assert [(row["ckpt"], row["batch"]) for row in report["steps"]] == [(False, 1), (True, 1)]
    assert all(row["step_s"] > 0 for row in report["steps"] + report["levers"] + report["predict"])
    assert [row["lever"] for row in report["levers"]] == ["reference", "channels_last"]
    assert all(row["planned_gib"] > 0 for row in report["steps"] + report["levers"])  # the planner beside each
    assert report["flops_per_sample"] > 0 and report["attention"]["timm_fused_attn"] == [True]
    fit = report["fit"]
    assert fit["returncode"] == 0 and fit["steps_logged"] == 10 and fit["finite"] and fit["falls"], fit
    assert "## Fit smoke" in (tmp_path / "bench_gpu.md").read_text()
