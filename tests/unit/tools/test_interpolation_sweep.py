"""tools/interpolation_sweep.py: mixes of the start and a fine-tuned checkpoint validated on the in-domain and guard
sets, each compared with the start (a = 0), and the best mix whose guard sets stay within tolerance chosen."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from dp_train.cli.main import main as dp_train, recorded_shape
from dp_train.synth import write_synthetic_shards
from tests.helpers.paths import REPO, TOOLS

sys.path.insert(0, str(TOOLS))
import interpolation_sweep  # noqa: E402

START = REPO / "weights" / "toy_start.safetensors"


def test_the_chosen_mix_is_the_best_in_domain_gain_with_every_guard_within_tolerance():
    results = {0.0: {"home": 0.4, "nyu": 0.10}, 0.5: {"home": 0.3, "nyu": 0.101}, 1.0: {"home": 0.2, "nyu": 0.13}}
    rows = interpolation_sweep.sweep_rows(results, ["home"], ["nyu"], "abs_rel", 0.02)
    assert [r["within"] for r in rows] == [True, True, False]
    assert [r["gain"] for r in rows] == pytest.approx([0.0, 0.25, 0.5])
    assert interpolation_sweep.chosen(rows)["alpha"] == 0.5


def test_a_sweep_without_the_start_is_one_error_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"val_sources": [{"name": "a", "urls": "a.tar"}],
                                               "guard_sources": [{"name": "g", "urls": "g.tar"}]}}))
    argv = ["--recipe", str(recipe), "--ckpt", "x.ckpt", "--start", "s.pt", "--alphas", "0.5,1",
            "--work-dir", str(tmp_path / "sweep")]
    assert interpolation_sweep.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --alphas must include 0 (the start, what changes are "
                                                    "measured from) and lie in [0, 1]"]


def test_a_sweep_over_a_real_fine_tune_measures_each_mix_against_the_start(tmp_path, capsys):
    shards = {name: str(write_synthetic_shards(tmp_path / name, name, count, size=(48, 64), seed=seed, progress=False))
              for name, count, seed in (("train", 4, 3), ("home", 2, 4), ("zero_shot", 2, 5))}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "limit_val_batches": 0, "logger": False,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
        "model": recorded_shape(str(START)) | {"init_from": str(START), "lr_encoder": 1e-3, "lr_decoder": 1e-3,
                                               "warmup_steps": 0, "boundary_metrics": False},
        "data": {"train_sources": [{"name": "train", "urls": shards["train"]}],
                 "val_sources": [{"name": "home", "urls": shards["home"]}],
                 "guard_sources": [{"name": "zero_shot", "urls": shards["zero_shot"]}],
                 "image_size": 512, "batch_size": 2, "samples_per_epoch": 4, "num_workers": 0, "pin_memory": False},
    }))
    assert dp_train(["fit", "--recipe", str(recipe)]) == 0
    work = tmp_path / "sweep"
    assert interpolation_sweep.main(["--recipe", str(recipe), "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"),
                                     "--start", str(START), "--alphas", "0,0.5,1", "--tolerance", "1e6",
                                     "--work-dir", str(work)]) == 0
    sweep = json.loads((work / "sweep.json").read_text())
    assert [r["alpha"] for r in sweep["rows"]] == [0.0, 0.5, 1.0]
    assert sweep["rows"][0]["gain"] == 0 and sweep["rows"][0]["changes"] == {"zero_shot": 0.0}
    assert len({r["in_domain"] for r in sweep["rows"]}) == 3  # each mix is its own network
    best = max(sweep["rows"], key=lambda r: r["gain"])  # every mix is within a tolerance of 1e6
    assert sweep["chosen"] == best["alpha"]
    assert f"chosen a = {best['alpha']:g}" in capsys.readouterr().out
