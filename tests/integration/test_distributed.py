"""Multi-process training on CPU with gloo: DDP (and FSDP2) runs match a single process with the same
global batch, validation metrics synced across ranks equal single-process ones, ranks see distinct samples."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml

from dp_train.cli.main import main
from dp_train.shards import ShardWriter
from dp_train.synth import render_scene, write_synthetic_shards
from dp_train.model import DepthProConfig, build_depth_pro, load_weights
from tests.helpers.cli import launch

STEPS = 6
SGD_LR = 1e-4
"""Plain SGD for the step-by-step comparison (tests.helpers.sgd: Adam would amplify rounding differences)."""
TINY = {"preset": "tiny", "lr_encoder": 1e-3, "lr_decoder": 1e-3, "warmup_steps": 2, "boundary_metrics": True,
        "log_images_every_n_val_steps": 0,
        "network": {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}}
STILL = {"zoom_range": [1.0, 1.0], "flip_prob": 0.0, "color_jitter_prob": 0.0, "blur_prob": 0.0,
         "noise_prob": 0.0, "jpeg_prob": 0.0}  # every view of a scene identical, whichever rank draws it
FSDP = {"class_path": "dp_train.runtime.strategy.AtomicModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}
STRATEGIES = {"ddp": "ddp", "fsdp": FSDP}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """`same`: 16 differently keyed copies of one scene (any two global batches are alike); `val`: 6 scenes."""
    root = tmp_path_factory.mktemp("dist_data")
    scene = render_scene(5, size=(64, 64))  # square: the zoom-1 crop is the whole image
    with ShardWriter(root / "same", "same", max_samples=4) as writer:
        for i in range(16):
            scene.key = f"copy-{i:03d}"
            writer.write(scene)
    val = write_synthetic_shards(root / "val", "val", 6, size=(64, 96), seed=40, samples_per_shard=2, progress=False)
    return {"same": writer.index_path, "val": val}


def recipe(run: Path, data: dict[str, Path], devices: int, strategy: str, batch_size: int) -> Path:
    """A short tiny-network run logging to CSV, recording each rank's sample keys."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": strategy, "max_steps": STEPS,
            "val_check_interval": STEPS, "check_val_every_n_epoch": None, "num_sanity_val_steps": 0,
            "log_every_n_steps": 1, "enable_progress_bar": False, "enable_checkpointing": False,
            "default_root_dir": str(run),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
            "callbacks": [{"class_path": "tests.helpers.record.RecordKeys", "init_args": {"out_dir": str(run)}},
                          {"class_path": "tests.helpers.sgd.PlainSGD", "init_args": {"lr": SGD_LR, "out_dir": str(run)}}],
        },
        "model": TINY | {"fsdp_param_dtype": "float32"},  # bf16 compute would differ from the fp32 reference
        "data": {"train_sources": [{"name": "same", "urls": str(data["same"])}],
                 "val_sources": [{"name": "val", "urls": str(data["val"]), "sequence": True}],  # synth-<seed> keys
                 "image_size": 512, "batch_size": batch_size, "val_batch_size": 1, "samples_per_epoch": 64,
                 "num_workers": 0, "pin_memory": False, "augment": STILL},
    }
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metrics(run: Path) -> list[dict[str, str]]:
    """Rows of the CSV logger's metrics file."""
    path = sorted(run.glob("version_*/metrics.csv"))[-1]  # the latest run's
    with open(path) as fh:
        return list(csv.DictReader(fh))


def series(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name)]


@pytest.fixture(scope="module")
def single(tmp_path_factory, data) -> Path:
    """The reference: one process, global batch 2."""
    run = tmp_path_factory.mktemp("single")
    launch(run, "fit", recipe(run, data, devices=1, strategy="auto", batch_size=2))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path, data, single, strategy):
    """2 ranks x batch 1 against 1 process x batch 2, from the same weights, on copies of one scene.

    Exactly equal in exact arithmetic: the first step's loss and averaged gradient (same weights, same
    data), and every later step of plain SGD. In float32 the two runs differ only in summation order (a
    batch of 2 against two batches of 1, and gloo's average): each op's result by a few ulps (2^-24 =
    6e-8 relative), a few hundred ops deep, so ~1e-5 relative at most; SGD adds lr x that gradient error to
    the weights, which changes the later losses by less again (lr x |grad|^2 ~ 1e-3 of the loss per
    step here). 1e-4 bounds all of it with room; a wrong average (e.g. a sum: the gradient doubled) moves
    the first gradient norm by 100 % and the losses from step 1 on by percents (checked by hand)."""
    launch(tmp_path, "fit", recipe(tmp_path, data, devices=2, strategy=STRATEGIES[strategy], batch_size=1))
    ours, reference = metrics(tmp_path), metrics(single)
    losses, expected = series(ours, "train/loss"), series(reference, "train/loss")
    assert len(losses) == len(expected) == STEPS
    norms, expected_norms = (grad_norms(run) for run in (tmp_path, single))
    assert norms[0] == pytest.approx(expected_norms[0], rel=1e-5)  # the first step: same weights, same data
    assert losses[0] == pytest.approx(expected[0], rel=1e-5)
    assert losses == pytest.approx(expected, rel=1e-4)
    assert norms == pytest.approx(expected_norms, rel=1e-4)
    assert losses[-1] < losses[0]
    keys = [set((tmp_path / f"keys_rank{r}.txt").read_text().split()) for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == STEPS and not keys[0] & keys[1]  # distinct samples per rank


def grad_norms(run: Path) -> list[float]:
    """Rank 0's gradient norm before each optimizer step (equal on every rank: gradients are averaged)."""
    return [float(line) for line in (run / "grad_norm_rank0.txt").read_text().split()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_validation_metrics_synced_over_ranks_equal_one_process(tmp_path_factory, data, strategy):
    """Same (seeded initial) weights: the 6 val scenes split over 2 ranks give the one-process metrics; read as
    the frames 40-45 of one clip (a sequence source), the temporal change pairs frames scored on different ranks
    after the sync: the 5 pairs of one process."""
    runs = {devices: tmp_path_factory.mktemp(f"validate{devices}") for devices in (1, 2)}
    for devices, run in runs.items():
        launch(run, "validate", recipe(run, data, devices, STRATEGIES[strategy] if devices > 1 else "auto", 1))
    names = ("val/abs_rel", "val/delta1", "val/rmse", "val/log10", "val/boundary_f1", "val/boundary_recall",
             "val/temporal_change", "val/temporal_pairs")
    for name in names:
        (two,), (one,) = series(metrics(runs[2]), name), series(metrics(runs[1]), name)
        assert two == pytest.approx(one, rel=1e-6, abs=1e-9), name
    assert series(metrics(runs[2]), "val/temporal_pairs") == [5.0]


@pytest.mark.slow
def test_fsdp_writes_sharded_checkpoints_that_resume_and_export(tmp_path, data):
    config = yaml.safe_load(recipe(tmp_path, data, devices=2, strategy=FSDP, batch_size=1).read_text())
    config["trainer"] |= {"enable_checkpointing": True, "max_steps": 2, "limit_val_batches": 0}
    config["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]
    config["model"]["fsdp_param_dtype"] = "bfloat16"  # the production policy: bf16 compute, fp32 reduction
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config))
    launch(tmp_path, "fit", path)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file()  # one shard file per rank, no gathering
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]  # written beside, swapped in

    config["trainer"]["max_steps"] = 4
    path.write_text(yaml.safe_dump(config))
    launch(tmp_path, "fit", path, "--ckpt_path", "last")
    steps = series(metrics(tmp_path), "train/loss")
    assert len(steps) >= 2 and all(math.isfinite(v) for v in steps)

    out = tmp_path / "model.safetensors"
    assert main(["export", "--ckpt", str(last), "--out", str(out)]) == 0
    net = build_depth_pro(DepthProConfig.preset("tiny", **{k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in TINY["network"].items()}))
    load_weights(net, out)  # strict: the consolidated shards are exactly the network's tensors


def test_weight_averaging_under_fsdp_is_refused_before_any_work(tmp_path, data, capsys):
    config = yaml.safe_load(recipe(tmp_path, data, devices=2, strategy=FSDP, batch_size=1).read_text())
    config["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging"}]
    path = tmp_path / "ema.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--recipe", str(path)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: EMAWeightAveraging (trainer.callbacks) cannot run under FSDP (ModelParallelStrategy): it "
        "deep-copies the sharded model; remove it or use DDP")
