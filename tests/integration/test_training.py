"""The main job learns: `fit --recipe` trains through the curriculum, logs, checkpoints and exports."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dp_train.cli.main import main
from dp_train.synth import write_synthetic_shards
from dp_train.model import build_depth_pro, load_weights
from dp_train.model.weights import save_weights
from tests.helpers.quickstart import quickstart_config
from tests.helpers.paths import REPO

SWITCH_STEP = 24


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory) -> dict[str, Path]:
    """Small synthetic train/val shard sets (rendered, exact metric depth)."""
    root = tmp_path_factory.mktemp("shards")
    return {
        "train": write_synthetic_shards(root / "train", "train", 24, size=(96, 128), seed=0, samples_per_shard=8,
                                        progress=False),
        "val": write_synthetic_shards(root / "val", "val", 4, size=(96, 128), seed=1000, progress=False),
    }


def short_recipe(tmp_path: Path, shards: dict[str, Path], max_steps: int) -> Path:
    """Overrides on top of quickstart.yaml: fewer steps, CSV logs, the test's own shards."""
    recipe = {
        "report_validation": True,  # validate before and after fit, as the quick start does
        "trainer": {
            "max_steps": max_steps,
            "val_check_interval": max_steps,
            "log_every_n_steps": 1,
            "default_root_dir": str(tmp_path),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path), "name": "run"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True},
                },
                {
                    "class_path": "dp_train.train.curriculum.CurriculumCallback",
                    "init_args": {
                        "stages": [
                            {"name": "stage1", "start_step": 0, "loss": {"mae": 1.0}},
                            {"name": "stage2", "start_step": SWITCH_STEP, "loss": {"mae": 1.0, "mage": 1.0}},
                        ]
                    },
                },
            ],
        },
        "model": {"log_images_every_n_val_steps": 0, "boundary_metrics": False},
        "data": {
            "train_sources": [{"name": "synth", "urls": str(shards["train"])}],
            "val_sources": [{"name": "synth_val", "urls": str(shards["val"])}],
            "num_workers": 0,
            "batch_size": 2,
        },
    }
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def logged(tmp_path: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) rows of one metric from the CSV logger."""
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as fh:
        return [(int(r["step"]), float(r[name])) for r in csv.DictReader(fh) if r.get(name)]


@pytest.mark.slow
def test_fit_learns_switches_stage_and_exports(tmp_path, synthetic_shards):
    """From random weights (not the quick start's pretrained start, whose loss is already low), 36 steps of
    the quick start's settings at a from-scratch learning rate bring the depth error down."""
    recipe = short_recipe(tmp_path, synthetic_shards, max_steps=36)
    from_scratch = ["--model.init_from=null", "--model.freeze_vit_norms=false",
                    "--model.lr_encoder=1e-3", "--model.lr_decoder=1e-3"]
    assert main(["fit", "--recipe", str(REPO / "recipes/quickstart.yaml"), "--recipe", str(recipe),
                 *from_scratch]) == 0

    losses = [v for _, v in logged(tmp_path, "train/mae")]
    assert len(losses) == 36
    assert sum(losses[-6:]) / 6 < 0.7 * sum(losses[:6]) / 6  # the depth error goes down
    stages = dict(logged(tmp_path, "curriculum/stage"))
    assert stages[SWITCH_STEP - 1] == 0.0 and stages[SWITCH_STEP] == 1.0
    assert [s for s, _ in logged(tmp_path, "train/mage")][0] == SWITCH_STEP  # derivative loss from the switch on
    assert logged(tmp_path, "val/abs_rel")

    out = tmp_path / "exported.safetensors"
    assert main(["export", "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"), "--out", str(out)]) == 0
    net = build_depth_pro(quickstart_config())
    load_weights(net, out)  # strict: the exported file has exactly the network's tensors
    assert torch.isfinite(net.head[0].weight).all()


@pytest.mark.slow
def test_a_checkpoint_decides_the_network_shape_and_the_recipe_the_rest(tmp_path, synthetic_shards):
    """Evaluate a checkpoint with another recipe: the network's shape comes from the checkpoint, evaluation
    settings from the recipe, and the file the run was initialised from is no longer needed."""
    start = tmp_path / "start.safetensors"
    save_weights(build_depth_pro(quickstart_config()), start)
    recipe = short_recipe(tmp_path, synthetic_shards, max_steps=2)
    trained = ["--recipe", str(REPO / "recipes/quickstart.yaml"), "--recipe", str(recipe), "--report_validation=false"]
    assert main(["fit", *trained, f"--model.init_from={start}"]) == 0
    start.unlink()

    evaluation = tmp_path / "eval.yaml"
    evaluation.write_text(yaml.safe_dump({"model": {"preset": "tiny", "boundary_metrics": True,
                                                    "network": {"decoder_features": 32}}}))
    assert main(["validate", *trained, "--recipe", str(evaluation), "--trainer.logger.init_args.name=eval",
                 f"--ckpt_path={tmp_path / 'ckpt' / 'last.ckpt'}"]) == 0
    with open(tmp_path / "eval" / "version_0" / "metrics.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["val/boundary_f1"]) >= 0 and float(row["val/abs_rel"]) > 0


def test_a_wrong_recipe_key_fails_before_any_work_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  presett: tiny\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--recipe", str(bad)])
    assert info.value.code != 0
    assert "presett" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "culprit"), [
    ("--weights=absent/depth_pro.pt", "weights file not found: absent/depth_pro.pt"),
    ("--model.preset=tinyy", "unknown preset 'tinyy'"),
    ("--model.network.vit_size=128", "model.network: "),
    ("--data.worker_start_method=threads", "data.worker_start_method='threads'"),
])
def test_a_value_the_classes_refuse_is_one_error_line(tmp_path, capsys, override, culprit):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": {"logger": False}, "model": {"preset": "tiny"}}))
    assert main(["validate", "--recipe", str(recipe), override]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: {culprit}") and "Traceback" not in "".join(lines)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_training_data_is_one_error_line(tmp_path, capsys, workers):
    """From the main process or from a data worker (whose exception carries the worker's traceback)."""
    shard = tmp_path / "bad-000.tar"
    shard.write_bytes(np.random.default_rng(0).bytes(20_000))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"logger": False, "max_steps": 1, "enable_progress_bar": False, "enable_checkpointing": False,
                    "default_root_dir": str(tmp_path)},
        "model": {"preset": "tiny", "network": {"vit_img_size": 128}},
        "data": {"train_sources": [{"name": "x", "urls": str(shard)}], "image_size": 512, "num_workers": workers},
    }))
    assert main(["fit", "--recipe", str(recipe)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "error: source 'x': no readable sample in its shards for worker 0"


def test_a_source_without_any_existing_shard_fails_at_setup_naming_it(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"logger": False, "max_steps": 1, "default_root_dir": str(tmp_path)},
        "model": {"preset": "tiny"},
        "data": {"train_sources": [{"name": "x", "urls": str(tmp_path / "typo-{000..002}.tar")}]},
    }))
    assert main(["fit", "--recipe", str(recipe)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: source 'x': none of its 3 shard file(s) exists (first: {tmp_path / 'typo-000.tar'})")


def test_a_wrong_network_field_is_named(tmp_path):
    from dp_train.train.module import DepthProModule

    with pytest.raises(ValueError, match="model.network: .*vit_size"):
        DepthProModule(preset="tiny", network={"vit_size": 128})


@pytest.mark.slow
def test_a_run_resumed_after_the_switch_continues_in_stage_2_with_stage_2_data(tmp_path, synthetic_shards):
    """Stage 1 trains on source `a` only, stage 2 on `b` only; the resume lands mid-epoch after the switch."""
    recipe = yaml.safe_load(short_recipe(tmp_path, synthetic_shards, max_steps=8).read_text())
    recipe["report_validation"] = False
    recipe["trainer"]["val_check_interval"] = None
    recipe["trainer"]["limit_val_batches"] = 0
    recipe["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "every_n_train_steps": 8},
        },
        {
            "class_path": "dp_train.train.curriculum.CurriculumCallback",
            "init_args": {
                "stages": [
                    {"name": "one", "start_step": 0, "mixture": {"a": 1.0}, "loss": {"mae": 1.0}},
                    {"name": "two", "start_step": 6, "mixture": {"b": 1.0}, "loss": {"mae": 1.0, "mage": 1.0}},
                ]
            },
        },
    ]
    shards = str(synthetic_shards["train"])
    recipe["data"] |= {"train_sources": [{"name": "a", "urls": shards}, {"name": "b", "urls": shards}],
                       "samples_per_epoch": 100}  # 50 batches per epoch: both runs stay inside epoch 0
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(recipe))
    base = ["fit", "--recipe", str(REPO / "recipes/quickstart.yaml"), "--recipe", str(path)]

    assert main(base) == 0
    assert main(base + ["--trainer.max_steps=12", "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]) == 0

    def rows(version: int, name: str) -> dict[int, float]:
        with open(tmp_path / "run" / f"version_{version}" / "metrics.csv") as fh:
            return {int(r["step"]): float(r[name]) for r in csv.DictReader(fh) if r.get(name)}

    first = rows(0, "curriculum/stage")
    assert [first[s] for s in range(8)] == [0.0] * 6 + [1.0] * 2
    samples_a, samples_b = rows(0, "train/samples_a"), rows(0, "train/samples_b")
    assert [samples_a[s] for s in range(8)] == [2.0] * 6 + [0.0] * 2  # the mixture switches on the exact batch
    assert [samples_b[s] for s in range(8)] == [0.0] * 6 + [2.0] * 2
    resumed = rows(1, "curriculum/stage")
    assert sorted(resumed) == [8, 9, 10, 11] and set(resumed.values()) == {1.0}
    assert rows(1, "train/samples_b") == {s: 2.0 for s in (8, 9, 10, 11)}
    assert set(rows(1, "train/samples_a").values()) == {0.0}
    assert set(rows(1, "train/mage")) == {8, 9, 10, 11}  # stage-2 objective re-applied after the resume
