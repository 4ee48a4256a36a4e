"""tools/adapt_resolution.py: every row's run is the toy recipe stack at that row's size on tools/ablate.py's scenes,
and bad options are one error line before anything is rendered."""

from __future__ import annotations

import sys

import pytest
import yaml

from tests.helpers.paths import REPO, TOOLS

sys.path.insert(0, str(TOOLS))
import adapt_resolution  # noqa: E402
import ablate  # noqa: E402


@pytest.mark.parametrize("row", [adapt_resolution.Row("native", "native", 128, 0),
                                 adapt_resolution.Row("resampled, adapted", "adapted", 256, 7)])
def test_a_rows_run_is_its_size_on_the_held_out_scenes_from_the_start(tmp_path, row):
    scenes = {name: tmp_path / f"{name}.index.json" for name in ablate.SCENE_SEEDS}
    path = adapt_resolution.run_recipe(tmp_path / row.slug, row, scenes, tmp_path / "start.safetensors")
    config = yaml.safe_load(path.read_text())
    assert config["model"] == {"init_from": str(tmp_path / "start.safetensors"), "network": {"vit_img_size": row.vit}}
    assert config["data"]["image_size"] == 4 * row.vit
    assert [s["urls"] for s in config["data"]["val_sources"]] == [str(scenes["synth_val"]), str(scenes["real_val"])]
    assert config["trainer"]["max_steps"] == config["trainer"]["val_check_interval"] == max(row.steps, 1)
    assert [p.name for p in adapt_resolution.RECIPES] == ["finetune.yaml", "finetune_demo.yaml",
                                                          "adapt_resolution_toy.yaml"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--init", "none.safetensors"], "--init none.safetensors: no such file"),
    (["--vit-img-size", "128"], "--vit-img-size must be a multiple of 128 other than the start's 128"),
    (["--vit-img-size", "200"], "--vit-img-size must be a multiple of 128"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
])
def test_bad_options_are_one_error_line_and_nothing_is_rendered(tmp_path, capsys, argv, message):
    start = ["--init", str(REPO / "weights" / "toy_start.safetensors")] if argv[0] != "--init" else []
    assert adapt_resolution.main([*start, *argv, "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")
    assert not (tmp_path / "work").exists()
