"""wandb sweep files (recipes/sweeps/*.yaml): what `wandb sweep` accepts, and every command line
`wandb agent` can render from them is accepted by `dp_train fit --print_config` with the swept
values landing where their dotted names say (and nowhere else)."""

from __future__ import annotations

import itertools
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dp_train.cli.main import main
from tests.helpers.paths import REPO

SWEEPS = sorted((REPO / "recipes" / "sweeps").glob("*.yaml"))

TOP_LEVEL_KEYS = {
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity", "project",
    "method", "command", "name", "run_cap", "metric", "metrics", "scheduler", "early_terminate", "parameters",
}
"""What the sweep config schema allows at the top (it sets additionalProperties: false)."""
METRIC_GOALS = {"val/abs_rel": "minimize", "val/boundary_f1": "maximize"}
"""Sweep metrics and their direction, as DepthProModule._log_evaluation logs them."""
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
ENV, INTERPRETER = "/usr/bin/env", "python"
"""What `wandb agent` puts for ${env} (not on Windows) and ${interpreter}."""
ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
LINEAR_RANGE = {"uniform", "int_uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values"}
LOG_RANGE = {"log_uniform", "q_log_uniform"}
"""Distributions by what min/max mean: the values themselves, or natural-log exponents of them."""


def load(path: Path) -> dict[str, Any]:
    """A sweep file as `wandb sweep` reads it (yaml.safe_load)."""
    return yaml.safe_load(path.read_text())


def candidate_values(spec: dict[str, Any]) -> list[Any]:
    """The values of one parameter to try: `value`, every one of `values`, or a distribution's two ends."""
    assert "parameters" not in spec, "nested parameters render as one dict, not as LightningCLI dotted keys"
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    integers = isinstance(spec["min"], int) and isinstance(spec["max"], int)
    distribution = spec.get("distribution", "int_uniform" if integers else "uniform")  # wandb's inference
    if distribution in LINEAR_RANGE:
        return [spec["min"], spec["max"]]
    if distribution in LOG_RANGE:
        return [math.exp(spec["min"]), math.exp(spec["max"])]
    raise AssertionError(f"distribution {distribution!r} has no min/max for this test to try")


def parameter_space(parameters: dict[str, dict]) -> list[dict[str, Any]]:
    """Every combination of every parameter's candidate values."""
    names = list(parameters)
    choices = [candidate_values(parameters[name]) for name in names]
    return [dict(zip(names, combination)) for combination in itertools.product(*choices)]


def macros(config: dict[str, Any], params: dict[str, Any]) -> dict[str, list[str]]:
    """The command macros as wandb documents them (`--name=value` with Python's str of the value)."""
    flags = [f"{name}={value}" for name, value in params.items()]
    return {
        "env": [ENV],
        "interpreter": [INTERPRETER],
        "program": [config["program"]] if "program" in config else [],
        "args": ["--" + flag for flag in flags],
        "args_no_hyphens": flags,
    }


def render(config: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The argv `wandb agent` runs for one run's parameter values.

    `${envvar:NAME}` is replaced inside any item; an item that is a whole `${macro}` becomes that
    macro's items. wandb silently drops an unknown macro: here it fails.
    """
    values = macros(config, params)
    argv: list[str] = []
    for item in config.get("command", DEFAULT_COMMAND):
        item = ENVVAR.sub(lambda match: os.environ.get(match[1], match[1]), str(item))
        if item.startswith("${") and item.endswith("}"):
            assert item[2:-1] in values, f"unknown macro {item}"
            argv += values[item[2:-1]]
        else:
            argv.append(item)
    return argv


def print_config(argv: list[str], capsys: pytest.CaptureFixture) -> dict[str, Any]:
    """Run a rendered `python -m dp_train ...` command in-process with --print_config; the printed config."""
    assert argv[:4] == [ENV, INTERPRETER, "-m", "dp_train"], argv
    capsys.readouterr()
    try:
        code = main([*argv[4:], "--print_config"])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    assert code in (0, None), f"refused: {' '.join(argv)}\n{err}"
    return yaml.safe_load(out)


def flatten(node: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """{(key or list index, ...): leaf value} of a nested config."""
    if isinstance(node, (dict, list)):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        return {path: leaf for key, child in items for path, leaf in flatten(child, (*prefix, key)).items()}
    return {prefix: node}


def resolve(config: dict[str, Any], dotted: str) -> tuple:
    """The concrete path a dotted override names: where a key meets a list, the list's last item
    (jsonargparse applies `--callbacks.init_args.x` to the last callback, and so on down)."""
    path: tuple = ()
    node: Any = config
    for key in dotted.split("."):
        while isinstance(node, list):
            path, node = (*path, len(node) - 1), node[-1]
        assert isinstance(node, dict) and key in node, f"{dotted}: no {key!r} after {path}"
        path, node = (*path, key), node[key]
    return path


def test_all_ablations_present() -> None:
    """The three sweeps docs/sweeps.md describes."""
    assert {path.stem for path in SWEEPS} == {"derivative_losses", "switch_step", "learning_rate"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda path: path.stem)
def test_sweep_file_is_valid(path: Path) -> None:
    """Keys wandb requires and allows, a logged metric, `${args}` into `dp_train fit` with a curriculum recipe."""
    text = path.read_text()
    assert text.startswith("#") and f"wandb sweep recipes/sweeps/{path.name}" in text and "wandb agent" in text
    config = load(path)
    assert set(config) <= TOP_LEVEL_KEYS, set(config) - TOP_LEVEL_KEYS
    assert config["method"] in ("grid", "random", "bayes")
    assert METRIC_GOALS.get(config["metric"]["name"]) == config["metric"]["goal"], config["metric"]
    assert (REPO / config["program"]).is_file()
    parameters = config["parameters"]
    assert parameters and all(isinstance(spec, dict) for spec in parameters.values())
    if config["method"] == "grid":
        assert all("values" in spec or "value" in spec for spec in parameters.values()), "grid needs values"
    command = [str(item) for item in config["command"]]
    assert command.count("${args}") == 1 and "${args_no_hyphens}" not in command, "LightningCLI wants --key=value"
    assert command[2:5] == ["-m", "dp_train", "fit"]
    assert {"recipes/curriculum.yaml", "recipes/stage2.yaml"} & set(command)


def test_macros_render_as_wandb_does() -> None:
    """Our macros give what wandb's own agent code gives, for floats, ints and booleans alike."""
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    params = {"model.lr_encoder": 1e-05, "model.warmup_steps": 500, "report_validation": True}
    theirs = utils.create_sweep_command_args({"args": {name: {"value": value} for name, value in params.items()}})
    ours = macros({"program": "dp_train/__main__.py"}, params)
    assert ours["args"] == theirs["args"] == ["--model.lr_encoder=1e-05", "--model.warmup_steps=500",
                                              "--report_validation=True"]
    assert ours["args_no_hyphens"] == theirs["args_no_hyphens"]
    assert utils.DEFAULT_SWEEP_COMMAND == DEFAULT_COMMAND


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda path: path.stem)
def test_every_rendered_command_is_accepted(path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """Each combination renders a command `dp_train fit` accepts; its config differs from the sweep's
    base command exactly at the swept keys, which hold the swept values."""
    config = load(path)
    monkeypatch.chdir(REPO)  # the recipes' paths are relative to the repository root
    monkeypatch.setattr(sys, "argv", ["dp_train"])  # as `python -m dp_train` sees it: no pytest arguments
    base = print_config(render(config, {}), capsys)
    callbacks = base["trainer"]["callbacks"]
    # what the dotted stage keys rely on
    assert callbacks[-1]["class_path"] == "dp_train.train.curriculum.CurriculumCallback"
    assert callbacks[-1]["init_args"]["stages"][-1]["name"] == "stage2"
    flat_base = flatten(base)
    for params in parameter_space(config["parameters"]):
        printed = print_config(render(config, params), capsys)
        flat = flatten(printed)
        targets = {resolve(printed, name): value for name, value in params.items()}
        for target, value in targets.items():
            assert flat[target] == pytest.approx(value), (params, target)
        changed = {key for key in flat.keys() | flat_base.keys() if flat.get(key) != flat_base.get(key)}
        assert changed <= targets.keys(), (params, changed - targets.keys())


def test_each_sweep_trial_checkpoints_into_its_own_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from dp_train.cli.main import separate_sweep_checkpoints

    callbacks = [ModelCheckpoint(dirpath=str(tmp_path / "ckpt")), ModelCheckpoint(dirpath=str(tmp_path / "ckpt"),
                                                                                   save_last=True)]
    trainer = SimpleNamespace(checkpoint_callbacks=callbacks)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    separate_sweep_checkpoints(trainer)  # not a sweep: folders unchanged
    assert {c.dirpath for c in callbacks} == {str(tmp_path / "ckpt")}
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep9")
    separate_sweep_checkpoints(trainer)
    assert {c.dirpath for c in callbacks} == {str(tmp_path / "ckpt" / "abc123")}
