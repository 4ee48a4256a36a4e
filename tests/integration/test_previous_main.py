"""A checkpoint written by an earlier main (before the package layout) resumes exactly under the code at hand:
the same samples, learning rates and losses as the run that wrote it (tests/data/previous_main/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.helpers.cli import child_env, dp_train_command
from tests.helpers.paths import REPO
from tests.helpers.previous_main import SAVED_AT, STEPS, recipe, write_shards

PREVIOUS = REPO / "tests" / "data" / "previous_main"
LOSS_RTOL = 1e-4
"""A step's loss may differ from the recorded one by float32 rounding only (another CPU's SIMD width sums in
another order: ~1e-6 relative per reduction, grown by at most three Adam steps). A resume that lost the
optimizer's moments changes the losses of steps 10-12 by 5 %, 5 % and 10 % (measured on this record); a wrong
sample or learning rate is caught by the keys and LRs themselves."""


def recorded_steps(path) -> dict[int, dict]:
    """The per-step record (tests.helpers.record.RecordSteps) of a run, by step."""
    return {line["step"]: line for line in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_a_checkpoint_of_the_previous_main_resumes_exactly(tmp_path):
    """Resumed from the earlier main's step-8 checkpoint (its class paths, callback states, data-stream position
    and schedule state as that code wrote them), steps 9-12 repeat that run's samples, LRs and losses."""
    checkpoint = tmp_path / f"step{SAVED_AT}.ckpt"
    shutil.copy(PREVIOUS / checkpoint.name, checkpoint)
    settings = recipe(tmp_path, write_shards(tmp_path / "shards"), "dp_train.train.curriculum.CurriculumCallback")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(settings))
    done = subprocess.run(dp_train_command("fit", tmp_path / "recipe.yaml", "--ckpt_path", str(checkpoint)),
                          env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not continued exactly" not in done.stderr, done.stderr[-3000:]
    resumed, before = recorded_steps(tmp_path / "steps.jsonl"), recorded_steps(PREVIOUS / "steps.jsonl")
    assert sorted(resumed) == list(range(SAVED_AT + 1, STEPS + 1))
    for step, line in resumed.items():
        assert line["keys"] == before[step]["keys"], f"step {step} drew other samples"
        assert line["lr"] == pytest.approx(before[step]["lr"], rel=1e-12), f"step {step} at another learning rate"
        assert line["loss"] == pytest.approx(before[step]["loss"], rel=LOSS_RTOL), f"step {step}'s loss differs"
