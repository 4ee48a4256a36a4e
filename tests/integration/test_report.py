"""`python -m dp_train test` with the EvaluationReport callback writes a consistent report with plots."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from dp_train.cli.main import main
from dp_train.synth import write_synthetic_shards
from dp_train.model.weights import save_weights
from dp_train.train.module import build_network
from dp_train.evaluation.report_files import PLOTS
from tests.helpers.cli import launch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SOURCES = {"synth_a": (0, 3), "synth_b": (500, 3)}
"""Test source name -> (first scene seed, scene count)."""


def eval_recipe(tmp_path: Path, devices: int = 1, batch_size: int = 2, sources: dict | None = None,
                depth_range: list[float] | None = None, sequences: tuple[str, ...] = ()) -> Path:
    """A tiny-network test recipe over two synthetic sources (`SOURCES` unless given; those named in `sequences`
    flagged `sequence: true`: keys `synth-<n>` read as frames of one clip), with the report callback (writing to
    `tmp_path/report`); the seeded network is the same in every run."""
    shards = {name: write_synthetic_shards(tmp_path / name, name, count, size=(64, 64), seed=seed, progress=False)
              for name, (seed, count) in (sources or SOURCES).items()}
    extra = {} if depth_range is None else {"depth_range": depth_range}
    recipe = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
            "precision": "32-true", "logger": False, "default_root_dir": str(tmp_path), "enable_progress_bar": False,
            "callbacks": [{"class_path": "dp_train.evaluation.report.EvaluationReport",
                           "init_args": {"out_dir": str(tmp_path / "report"), "worst_cases": 3}}],
        },
        "model": {
            "preset": "tiny",
            "network": {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]},
            "log_images_every_n_val_steps": 0,
        },
        "data": {
            "test_sources": [{"name": name, "urls": str(path), "sequence": name in sequences} | extra
                             for name, path in shards.items()],
            "image_size": 512, "batch_size": batch_size, "num_workers": 0, "pin_memory": False,
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


@pytest.mark.slow
def test_weights_flag_evaluates_the_given_weights(tmp_path):
    recipe = eval_recipe(tmp_path)
    config = yaml.safe_load(recipe.read_text())
    torch.manual_seed(1)  # other weights than the recipe's seeded initialisation
    save_weights(build_network(config["model"]["preset"], config["model"]["network"]), tmp_path / "w.safetensors")

    def per_image(*extra: str) -> list[dict[str, str]]:
        assert main(["test", "--recipe", str(recipe), *extra]) == 0
        return read_csv(tmp_path / "report" / "per_image.csv")

    given = per_image("--weights", str(tmp_path / "w.safetensors"))
    assert given == per_image(f"--model.init_from={tmp_path / 'w.safetensors'}")
    assert [r["abs_rel"] for r in given] != [r["abs_rel"] for r in per_image()]


def worst_section(report: Path) -> str:
    """The worst-images table of report.md."""
    return report.read_text().split("## Worst")[1].split("## Plots")[0]


@pytest.mark.slow
def test_two_ranks_write_the_report_of_one_process(tmp_path_factory):
    """3 images per source, one per batch, over 2 ranks: rank 1 runs 2 padding batches to keep step with rank 0.
    The report lists every image once (no padding), with the one-process values, and the same worst cases; a
    sequence source's temporal change pairs frames scored on both ranks: the one-process figure, 2 pairs."""
    runs = {devices: tmp_path_factory.mktemp(f"report{devices}") for devices in (1, 2)}
    for devices, run in runs.items():
        launch(run, "test", eval_recipe(run, devices, batch_size=1, sequences=("synth_a",)))

    def by_image(run: Path) -> dict[tuple[str, str], dict[str, str]]:
        rows = read_csv(run / "report" / "per_image.csv")
        assert len(rows) == sum(count for _, count in SOURCES.values())
        return {(row["dataset"], row["key"]): row for row in rows}

    two, one = by_image(runs[2]), by_image(runs[1])
    assert two.keys() == one.keys()
    for image, row in one.items():
        for column, value in row.items():
            if column not in ("dataset", "key") and value:
                # Tolerance: float32 sums over a few hundred thousand pixels, in another process.
                assert float(two[image][column]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), (image, column)
            else:
                assert two[image][column] == value, (image, column)
    per_dataset = {devices: read_csv(run / "report" / "per_dataset.csv") for devices, run in runs.items()}
    assert [r["n_images"] for r in per_dataset[2]] == [r["n_images"] for r in per_dataset[1]]
    temporal = {devices: {r["dataset"]: (r["temporal_change"], r["temporal_pairs"]) for r in rows}
                for devices, rows in per_dataset.items()}
    (change, pairs), other = temporal[1]["synth_a"], temporal[1]["synth_b"]
    assert math.isfinite(float(change)) and float(pairs) == 2 and other == ("", "")  # not a sequence source
    assert float(temporal[2]["synth_a"][0]) == pytest.approx(float(change), rel=1e-5)
    assert temporal[2]["synth_b"] == other
    assert "temporal change" in (runs[2] / "report" / "report.md").read_text()
    worst = {devices: re.findall(r"\| (synth_[ab] \| \S+) \|", worst_section(run / "report" / "report.md"))
             for devices, run in runs.items()}
    assert len(worst[1]) == 3 and worst[2] == worst[1]


PAPER_SOURCES = {"sintel": (0, 3), "zoom": (500, 3)}
"""Synthetic sources named as two of the paper's benchmarks (a metric depth set and a focal-length set)."""


def paper_csvs(run: Path) -> dict[str, list[dict[str, str]]]:
    """The paper tables a run wrote, by file name."""
    return {path.name: read_csv(path) for path in sorted((run / "report").glob("paper_*.csv"))}


@pytest.mark.slow
def test_the_paper_tables_are_written_alike_by_one_and_two_ranks(tmp_path_factory):
    """Sources named like the paper's benchmarks fill its tables, in report.md and as CSV, with the paper's
    Depth Pro as the reference row; two ranks write what one does."""
    runs = {devices: tmp_path_factory.mktemp(f"paper{devices}") for devices in (1, 2)}
    for devices, run in runs.items():
        launch(run, "test", eval_recipe(run, devices, batch_size=1, sources=PAPER_SOURCES, depth_range=[0.5, 40.0]))
    one, two = paper_csvs(runs[1]), paper_csvs(runs[2])
    assert sorted(one) == ["paper_tab18_images.csv", "paper_tab1_delta1.csv", "paper_tab2_boundaries.csv",
                           "paper_tab3_focal.csv", "paper_tab4_depth.csv"]
    tab1 = one["paper_tab1_delta1.csv"]
    assert list(tab1[0]) == ["method", "sintel", "avg. rank"]
    assert [row["method"] for row in tab1] == ["this checkpoint, true f", "this checkpoint, predicted f",
                                               "Depth Pro (paper)"]
    assert float(tab1[-1]["sintel"]) == 40.0
    per_dataset = {r["dataset"]: r for r in read_csv(runs[1] / "report" / "per_dataset.csv")}
    assert float(tab1[0]["sintel"]) == pytest.approx(100 * float(per_dataset["sintel"]["delta1"]), rel=1e-9)
    # Boundary F1 on every metric image, also those with invalid pixels (open sky, outside the depth range).
    assert all(r["boundary_f1"] for r in read_csv(runs[1] / "report" / "per_image.csv") if r["dataset"] == "sintel")
    assert [row["method"] for row in one["paper_tab3_focal.csv"]] == ["this checkpoint", "Depth Pro (paper)"]
    for name, rows in one.items():
        assert [list(row) for row in two[name]] == [list(row) for row in rows], name
        for row_two, row in zip(two[name], rows):
            for column, value in row.items():
                if column == "method" or not value:
                    assert row_two[column] == value, (name, column)
                else:  # tolerance: float32 sums over a few hundred thousand pixels, in another process
                    assert float(row_two[column]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), (name, column)
    report = (runs[1] / "report" / "report.md").read_text()
    assert "## The paper's tables" in report and "Tab. 1: zero-shot metric depth" in report
