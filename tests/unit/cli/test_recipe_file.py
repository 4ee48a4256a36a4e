"""Several `--recipe` files: a later mapping updates the earlier one; a broken file is named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dp_train.cli.main import main

FIRST = {"trainer": {"logger": False},
         "model": {"preset": "tiny", "network": {"vit_img_size": 128, "decoder_features": 16}}}


def printed_config(tmp_path: Path, capsys, *recipes: object) -> dict:
    """The configuration `fit` resolves from `recipes` (mappings written as YAML files, or paths), as printed."""
    argv = ["fit"]
    for index, recipe in enumerate(recipes):
        if isinstance(recipe, dict):
            path = tmp_path / f"r{index}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            recipe = path
        argv += ["--recipe", str(recipe)]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_a_later_recipe_updates_the_network_mapping_key_by_key(tmp_path, capsys):
    config = printed_config(tmp_path, capsys, FIRST, {"model": {"network": {"grad_checkpointing": True}}})
    assert config["model"]["network"] == {"vit_img_size": 128, "decoder_features": 16, "grad_checkpointing": True}


def test_a_later_recipe_still_replaces_values_and_lists(tmp_path, capsys):
    sources = [{"name": "b", "urls": "b.tar"}]
    config = printed_config(tmp_path, capsys, FIRST | {"data": {"train_sources": [{"name": "a", "urls": "a.tar"}]}},
                            {"model": {"preset": "small", "network": {"decoder_features": 64}},
                             "data": {"train_sources": sources}})
    assert config["model"]["preset"] == "small" and config["model"]["network"]["decoder_features"] == 64
    assert [s["name"] for s in config["data"]["train_sources"]] == ["b"]


@pytest.mark.parametrize(("content", "reason"), [
    ("model:\n  network: {grad_checkpointing: true\n", "while parsing a flow mapping"),
    ("- a\n- b\n", "holds a list, not a mapping of settings"),
    ("", "holds nothing, not a mapping of settings"),
])
def test_a_broken_second_recipe_is_named_in_one_line(tmp_path, capsys, content, reason):
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(FIRST))
    second = tmp_path / "second.yaml"
    second.write_text(content)
    with pytest.raises(SystemExit):
        main(["fit", "--recipe", str(first), "--recipe", str(second)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: --recipe {second}: ") and reason in errors[0], errors
