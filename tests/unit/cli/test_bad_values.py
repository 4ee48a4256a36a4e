"""Recipe values that cannot work are one short `error:` line naming the key (and the curriculum stage), before
any work: model ranges, curriculum mixtures, and values jsonargparse refuses deep inside a union type."""

from __future__ import annotations

import math

import pytest
import yaml

from dp_train.cli.main import main
from dp_train.train.curriculum import CurriculumCallback, Stage
from dp_train.train.module import DepthProModule
from dp_train.utils.ranges import POSITIVE, Range

RECIPE = {"trainer": {"logger": False}, "model": {"preset": "tiny", "network": {"vit_img_size": 128}},
          "data": {"image_size": 512, "train_sources": [{"name": "a", "urls": "a-000.tar"},
                                                        {"name": "b", "urls": "b-000.tar"}], "num_workers": 0}}
"""A fit recipe that gets as far as its checks (its shards need not exist: they are opened at setup)."""


def error_lines(capsys) -> list[str]:
    """The `error:` and `Traceback` lines the command wrote to stderr."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]


def fit_with_stages(tmp_path, stages: list[dict], *overrides: str, model: dict | None = None) -> int:
    """Run `fit` on RECIPE (its `model` updated with `model`) with a curriculum of `stages`."""
    recipe = tmp_path / "r.yaml"
    callback = {"class_path": "dp_train.train.curriculum.CurriculumCallback", "init_args": {"stages": stages}}
    recipe.write_text(yaml.safe_dump(RECIPE | {"trainer": RECIPE["trainer"] | {"callbacks": [callback]},
                                               "model": RECIPE["model"] | (model or {})}))
    return main(["fit", "--recipe", str(recipe), *overrides])


@pytest.mark.parametrize(("key", "value", "bound"), [
    ("trim_fraction", 1.0, "in [0, 1)"), ("trim_fraction", -0.1, "in [0, 1)"),
    ("lr_encoder", -1e-3, "> 0"), ("lr_decoder", 0.0, "> 0"), ("lr_decoder", math.nan, "> 0"),
    ("lr_encoder", math.inf, "> 0"), ("derivative_scales", 0, ">= 1"), ("weight_decay", -0.01, ">= 0"),
    ("min_lr_ratio", 2.0, "in [0, 1]"),
])
def test_a_model_value_out_of_range_is_refused_naming_its_key(key, value, bound):
    with pytest.raises(ValueError) as refused:
        DepthProModule(preset="tiny", **{key: value})
    assert str(refused.value) == f"model.{key}={value}: must be {bound}"


def test_ranges_say_which_ends_are_open():
    assert [str(r) for r in (Range(1), POSITIVE, Range(0, 1, high_open=True), Range(0, 1, low_open=True))] == [
        ">= 1", "> 0", "in [0, 1)", "in (0, 1]"]
    assert POSITIVE.holds(1e-9) and not POSITIVE.holds(0.0) and not Range(0, 1).holds(math.nan)


def test_a_model_value_out_of_range_is_one_error_line_from_the_command_line(tmp_path, capsys):
    assert fit_with_stages(tmp_path, [{"name": "one", "start_step": 0}], "--model.lr_encoder=-1e-3") == 1
    assert error_lines(capsys) == ["error: model.lr_encoder=-0.001: must be > 0"]


def test_a_mixture_naming_an_unknown_source_is_one_line_naming_the_stage_and_the_known_sources(tmp_path, capsys):
    stages = [{"name": "one", "start_step": 0}, {"name": "two", "start_step": 5, "mixture": {"a": 1.0, "zz": 1.0}}]
    assert fit_with_stages(tmp_path, stages) == 1
    assert error_lines(capsys) == ["error: trainer.callbacks: CurriculumCallback stage 'two': mixture names unknown "
                                   "source(s) 'zz'; data.train_sources are 'a', 'b'"]


@pytest.mark.parametrize("mixture", [{"a": -1.0}, {"a": 0.0, "b": 0.0}, {"a": math.nan}])
def test_a_mixture_without_a_usable_weight_is_refused_naming_the_stage(mixture):
    callback = CurriculumCallback([Stage("one", 0), Stage("two", 3, mixture=mixture)])
    with pytest.raises(ValueError, match="^trainer.callbacks: CurriculumCallback stage 'two': mixture weights must "
                                         "be >= 0 and not all 0"):
        callback.check_mixtures(["a", "b"])


@pytest.mark.parametrize(("stage", "reason"), [
    ({"name": "one", "start_step": 0, "mixtur": {"a": 1.0}}, "stages: Stage: Option 'mixtur.a' is not accepted"),
    ({"name": "one", "start_step": "soon"}, "stages: Stage: start_step: Expected a <class 'int'>. Got value: soon"),
    ({"name": "one", "start_step": 0, "loss": {"maee": 1.0}}, "stages: Stage: loss: Objective: Option 'maee' is "
                                                              "not accepted"),
])
def test_a_bad_curriculum_stage_is_one_short_line_with_the_real_reason(tmp_path, capsys, stage, reason):
    with pytest.raises(SystemExit) as stopped:
        fit_with_stages(tmp_path, [stage])
    errors = error_lines(capsys)
    assert stopped.value.code == 2 and len(errors) == 1 and len(errors[0]) < 300, errors
    assert errors[0].startswith(f"error: trainer.callbacks: CurriculumCallback: {reason} (see "), errors


@pytest.mark.parametrize(("loss", "culprit"), [
    ({"mae": -1.0}, "loss.mae=-1.0: must be a weight >= 0 or a mapping {weight, metric, non_metric, real, synthetic, "
                    "ssi}"),
    ({"mae": None}, "loss.mae=None: must be a weight >= 0 or a mapping"),
    ({"mage": {"weight": None}}, "loss.mage.weight=None: must be a number >= 0"),
    ({"mage": {"weight": 1.0, "real": None}}, "loss.mage.real=None: must be true or false"),
])
@pytest.mark.parametrize("where", ["stage", "model"])
def test_a_bad_loss_table_entry_is_one_short_line_naming_its_key(tmp_path, capsys, loss, culprit, where):
    stage = {"name": "one", "start_step": 0} | ({"loss": loss} if where == "stage" else {})
    assert fit_with_stages(tmp_path, [stage], model={"loss": loss} if where == "model" else None) == 1
    key = "trainer.callbacks: CurriculumCallback stage 'one': " if where == "stage" else "model."
    errors = error_lines(capsys)
    assert len(errors) == 1 and errors[0].startswith(f"error: {key}{culprit}") and len(errors[0]) < 200, errors


def test_a_value_no_type_of_a_union_takes_is_refused_listing_what_is_accepted(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fit_with_stages(tmp_path, [{"name": "one", "start_step": 0}], "--trainer.precision=bf17")
    errors = error_lines(capsys)
    assert len(errors) == 1 and errors[0].startswith(
        "error: trainer.precision: got bf17; accepted: 64, 32, 16, 'transformer-engine', "), errors
    assert "'bf16-mixed'" in errors[0] and errors[0].endswith(", null (see `dp_train fit --help`)"), errors
