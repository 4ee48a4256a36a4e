"""tools/forgetting.py: the toy study of fine-tuning that does not forget composes real `fit` jobs from the shipped
fine-tuning recipes, and its table measures every row against the start in the direction the guard uses."""

from __future__ import annotations

import contextlib
import io
import sys

import pytest
import yaml

from dp_train.cli.main import main as dp_train
from tests.helpers.paths import TOOLS

sys.path.insert(0, str(TOOLS))
import forgetting  # noqa: E402


def scenes(tmp_path) -> dict:
    """Index paths of every scene set (not rendered: composing a job does not read them)."""
    return {name: tmp_path / f"{name}.index.json" for name in forgetting.SCENE_SEEDS}


@pytest.mark.parametrize("condition", list(forgetting.CONDITIONS))
def test_every_run_is_the_shipped_fine_tuning_job_with_its_condition_data_and_guard(tmp_path, condition):
    recipe = forgetting.fit_recipe(tmp_path / "run", condition, 2, 8, forgetting.REPO / "weights" /
                                   "toy_start.safetensors", scenes(tmp_path))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        dp_train(["fit", *forgetting.recipe_args([*forgetting.RECIPES, recipe]), "--print_config"])
    job = yaml.safe_load(printed.getvalue())
    assert job["seed_everything"] == 2 and job["data"]["seed"] == 2 and job["trainer"]["max_steps"] == 8
    assert job["model"]["preset"] == "tiny" and job["model"]["lr_encoder"] == 1.0e-4  # finetune_demo.yaml's
    assert [s["name"] for s in job["data"]["train_sources"]] == ["real_train"]
    assert [s["name"] for s in job["data"]["val_sources"]] == ["real_val"]
    assert [s["name"] for s in job["data"]["guard_sources"]] == ["synth_val"]
    for key, value in forgetting.CONDITIONS[condition].items():
        assert {k: job["model"][key][k] for k in value} == value if isinstance(value, dict) else job["model"][key] == value
    guard = [c for c in job["trainer"]["callbacks"] if c["class_path"].endswith("GuardedSelection")]
    assert guard[0]["init_args"]["dirpath"] == str(tmp_path / "run" / "checkpoints")


def metrics(real: float, synth: float) -> dict[str, float]:
    """A scored file's metrics: test AbsRel in-domain and on the guard, seam ratios 1."""
    return {"real_test/abs_rel": real, "synth_test/abs_rel": synth, "real_test/seam_ratio": 1.0,
            "synth_test/seam_ratio": 1.0}


def test_gains_and_guard_changes_are_relative_to_the_start_with_the_guards_sign():
    start = metrics(0.5, 0.2)
    seed = {name: {"metrics": metrics(0.4, 0.21)} for name in forgetting.ROWS[1:]}
    seed["guarded"]["step"], seed["interpolated"]["alpha"] = 150, 0.5
    rows = forgetting.table_rows(start, [seed, seed])
    assert [r["row"] for r in rows] == list(forgetting.ROWS)
    assert rows[0]["gain"] == [0.0, 0.0] and rows[0]["guard_change"] == [0.0, 0.0]
    assert rows[1]["gain"] == pytest.approx([0.2, 0.2]) and rows[1]["guard_change"] == pytest.approx([0.05, 0.05])
    assert rows[-2]["chosen"] == [150, 150] and rows[-1]["chosen"] == [0.5, 0.5]
    table = forgetting.markdown(rows).splitlines()
    assert len(table) == 2 + len(forgetting.ROWS)
    assert table[3].split(" | ")[2] == "+20.0 ± 0.0 %" and table[3].split(" | ")[4] == "+5.0 ± 0.0 %"


def test_a_missing_start_is_one_error_line_and_nothing_is_rendered(tmp_path, capsys):
    assert forgetting.main(["--init", str(tmp_path / "none.safetensors"), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --init") and "none.safetensors" in err[0]
    assert not (tmp_path / "w").exists()
