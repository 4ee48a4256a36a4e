"""`python -m dp_train test` with the EvaluationReport callback writes a consistent report with plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml

from dp_train.cli import main
from dp_train.data.synth import write_synthetic_shards
from dp_train.report import PLOTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SOURCES = {"synth_a": (0, 3), "synth_b": (500, 3)}
"""Test source name -> (first scene seed, scene count)."""


def eval_recipe(tmp_path: Path) -> Path:
    """A tiny-network test recipe over two synthetic sources, with the report callback."""
    shards = {name: write_synthetic_shards(tmp_path / name, name, count, size=(64, 64), seed=seed, progress=False)
              for name, (seed, count) in SOURCES.items()}
    recipe = {
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "logger": False,
            "default_root_dir": str(tmp_path), "enable_progress_bar": False,
            "callbacks": [{"class_path": "dp_train.report.EvaluationReport",
                           "init_args": {"out_dir": str(tmp_path / "report"), "worst_cases": 3}}],
        },
        "model": {
            "preset": "tiny",
            "network": {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]},
            "log_images_every_n_val_steps": 0,
        },
        "data": {
            "test_sources": [{"name": name, "urls": str(path)} for name, path in shards.items()],
            "image_size": 512, "batch_size": 2, "num_workers": 0, "pin_memory": False,
        },
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_the_report_lists_every_image_and_its_dataset_means(tmp_path):
    assert main(["test", "--recipe", str(eval_recipe(tmp_path))]) == 0
    out = tmp_path / "report"

    per_image = read_csv(out / "per_image.csv")
    assert len(per_image) == sum(count for _, count in SOURCES.values())
    assert {r["dataset"] for r in per_image} == set(SOURCES)
    assert all(r["f_pred"] and r["abs_rel_fpred"] and r["boundary_recall"] for r in per_image)  # FOV head, mattes
    for name in SOURCES:  # boundary F1 needs dense depth: scenes with open sky have none
        assert any(r["boundary_f1"] for r in per_image if r["dataset"] == name)

    per_dataset = {r["dataset"]: r for r in read_csv(out / "per_dataset.csv")}
    for name, (_, count) in SOURCES.items():
        values = [float(r["abs_rel"]) for r in per_image if r["dataset"] == name]
        assert int(per_dataset[name]["n_images"]) == count
        assert math.isclose(float(per_dataset[name]["abs_rel"]), sum(values) / len(values), rel_tol=1e-9)

    report = (out / "report.md").read_text()
    assert all(name in report for name in SOURCES)
    for plot in PLOTS.values():
        assert (out / plot).read_bytes()[:8] == PNG_SIGNATURE, plot
        assert f"({plot})" in report
