"""`python -m dp_train plan`: a recipe's memory per GPU and time, read the way `fit` reads recipes, and a bad recipe
refused in one line."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.cli import child_env
from tests.helpers.paths import REPO

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def plan(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m dp_train plan ARGS` in the checkout."""
    return subprocess.run([sys.executable, "-m", "dp_train", "plan", *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=600)


def test_plan_prints_the_step_memory_and_a_row_per_gpu_with_gpus_changing_only_the_accumulation(tmp_path):
    """One run (each traces the network): the recipe read as `fit` reads it, with a layered recipe's global
    batch split over 4 GPUs by accumulation and its `model.compile` timed at the compiled shares, the step's memory
    by part, and one row per requested GPU."""
    recipe = tmp_path / "sixteen.yaml"
    recipe.write_text("data: {global_batch_size: 16}\nmodel: {compile: true}\n")
    proc = plan("--recipe", str(QUICKSTART), "--recipe", str(recipe), "--gpus", "4",
                "--gpu", "A100-40GB", "--gpu", "V100-32GB")
    assert proc.returncode == 0, proc.stderr
    assert "step: batch 2/GPU x 4 GPU x 2 accumulated = 16, 32-true, act. ckpt off, ddp, compiled" in proc.stdout
    assert "the share an H200 reached compiled" in proc.stdout
    assert "400 steps" in proc.stdout and "memory per GPU: parameters" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| A100-40GB") or line.startswith("| V100")]
    assert len(rows) == 2 and all("| yes |" in row for row in rows)


def test_a_global_batch_the_gpus_cannot_split_is_one_error_line(tmp_path):
    recipe = tmp_path / "odd.yaml"
    recipe.write_text("data: {global_batch_size: 6}\n")
    proc = plan("--recipe", str(QUICKSTART), "--recipe", str(recipe), "--gpus", "2")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: data.global_batch_size=6 is not a multiple of data.batch_size=2 x 2 GPUs")


def test_a_missing_recipe_is_one_error_line_naming_it(tmp_path):
    proc = plan("--recipe", str(tmp_path / "nope.yaml"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "nope.yaml" in proc.stderr
