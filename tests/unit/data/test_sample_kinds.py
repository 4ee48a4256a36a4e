"""Samples of every kind are first-class: depth (metric or relative), focal-only photos and mattes each feed the
losses and metrics their ground truth supports, and evaluation images with nothing to score are counted."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dp_train.cli.main import main
from dp_train.data.augment import EvalTransform, TrainTransform
from dp_train.shards import SampleError, SampleMeta, ShardWriter, decode_sample, encode_sample, make_sample
from dp_train.data.health import DataError
from dp_train.data.sources import SourceConfig
from dp_train.data.stream import TrainStream, ValStream
from dp_train.evaluation.per_image import align_scale_shift, evaluated_images
from dp_train.evaluation.depth_accuracy import depth_metrics
from dp_train.synth import write_synthetic_shards
from tests.helpers.plane_samples import SIZE, keys_of

NETWORK = {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}


def depth_free(key: str, f_px: float | None = 40.0, alpha: bool = False):
    """A photo written without depth (`depth_kind` "none"): a focal-only photo, or with `alpha` a matte."""
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    matte = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (24, 1)) if alpha else None
    meta = SampleMeta("photos", f_px, metric=False, synthetic=False, depth_kind="none")
    return make_sample(key, image, np.zeros((24, 32), np.float32), meta, alpha=matte)


def write(root: Path, name: str, samples: list) -> Path:
    """One shard set of `samples`; returns its index."""
    with ShardWriter(root, name) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.index_path


def test_a_sample_written_without_depth_has_no_depth_member_and_decodes_all_invalid():
    raw = encode_sample(depth_free("p-0"))
    assert not {"depth.npy", "depth.png"} & raw.keys()
    sample = decode_sample(raw)
    assert not sample.meta.has_depth and not sample.valid.any() and sample.depth.shape == (24, 32)
    written = depth_free("p-1")
    written.depth[:] = 3.0
    written.valid[:] = True
    with pytest.raises(SampleError, match="written without depth"):
        encode_sample(written)


def test_focal_only_photos_feed_fov_training_and_evaluation_but_never_depth_training(tmp_path):
    index = write(tmp_path, "photos", [depth_free(f"p-{i}") for i in range(4)])
    source = SourceConfig("photos", str(index))
    fov = TrainStream([source], TrainTransform(SIZE), batch_size=2, samples_per_epoch=4, use="fov")
    batches = list(fov)
    assert len(batches) == 2 and all(int(b["bad_records"].sum()) == 0 for b in batches)
    assert all(not b["has_depth"].any() and (b["f_px"] > 0).all() for b in batches)
    evaluated = list(ValStream([source], EvalTransform(SIZE), batch_size=4))
    assert sorted(keys_of(evaluated)) == [f"p-{i}" for i in range(4)]
    with pytest.raises(DataError, match="no readable sample"):
        list(TrainStream([source], TrainTransform(SIZE), batch_size=2, samples_per_epoch=4, use="depth"))


def tiny_recipe(tmp_path: Path, data: dict, **model) -> Path:
    """A tiny-network recipe (CPU, no logger) with the given data section."""
    recipe = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 1, "limit_val_batches": 0, "logger": False,
                    "default_root_dir": str(tmp_path), "enable_progress_bar": False, "precision": "32-true",
                    "callbacks": [{"class_path": "dp_train.evaluation.report.EvaluationReport",
                                   "init_args": {"out_dir": str(tmp_path / "report"), "worst_cases": 2}}]},
        "model": {"preset": "tiny", "network": NETWORK, "log_images_every_n_val_steps": 0} | model,
        "data": {"image_size": 512, "batch_size": 2, "num_workers": 0, "pin_memory": False} | data,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("mode", ["depth", "fov"])
def test_fit_refuses_a_source_of_the_wrong_kind_before_any_work(tmp_path, capsys, mode):
    """A focal-only photo set cannot feed the depth objective; a relative set without focal lengths cannot feed
    the FOV head: one line naming the source, before a checkpoint folder or a data worker exists."""
    if mode == "depth":
        samples = [depth_free(f"p-{i}") for i in range(2)]
    else:
        meta = SampleMeta("rel", None, metric=False, synthetic=False)
        samples = [make_sample(f"r-{i}", np.zeros((24, 32, 3), np.uint8), np.ones((24, 32)), meta) for i in range(2)]
    index = write(tmp_path / "shards", "wrong", samples)
    recipe = tiny_recipe(tmp_path, {"train_sources": [{"name": "wrong_kind", "urls": str(index)}]}, mode=mode)
    assert main(["fit", "--recipe", str(recipe)]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith("error: data.train_sources") and "'wrong_kind'" in lines[0], lines
    assert f"{mode} mode" in lines[0]
    assert not (tmp_path / "lightning_logs").exists() and not (tmp_path / "checkpoints").exists()


def test_scale_and_shift_alignment_recovers_an_affine_prediction_exactly():
    """Relative ground truth is inverse-depth-like up to scale and shift: a prediction that is an affine map of it
    scores AbsRel 0 and delta1 1 after alignment; a prediction that is not, does not."""
    truth = torch.linspace(0.2, 2.0, 48).reshape(6, 8)
    mask = torch.ones_like(truth, dtype=torch.bool)
    mask[0, :3] = False
    fitted = align_scale_shift(3.0 * truth - 0.1, truth, mask)
    assert torch.allclose(fitted[mask], truth[mask], rtol=1e-5)  # float32 inputs, float64 fit: ~1e-7 relative
    values = depth_metrics(1 / fitted[None], 1 / truth[None], mask[None])
    assert float(values["abs_rel"][0]) < 1e-5 and float(values["delta1"][0]) == 1.0
    scrambled = align_scale_shift(truth.flip(1), truth, mask)
    assert float(depth_metrics(1 / scrambled.clamp(min=0.02)[None], 1 / truth[None], mask[None])["abs_rel"][0]) > 0.1


def test_an_evaluation_image_outside_the_depth_range_is_counted_not_dropped(tmp_path):
    index = write_synthetic_shards(tmp_path, "s", 2, size=(64, 64), seed=1, progress=False)
    source = SourceConfig("far", str(index), depth_range=(5e3, 1e4))  # no synthetic scene is that deep
    stream = ValStream([source], EvalTransform(SIZE), batch_size=2)
    stream.native_truth = True
    batches = list(stream)
    assert len(keys_of(batches)) == 2 and sum(int(b["bad_records"].sum()) for b in batches) == 0
    images = evaluated_images(torch.ones(2, 1, SIZE, SIZE), batches[0], torch.ones(2, dtype=torch.bool))
    assert all(image.is_empty for image in images)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    """per_dataset.csv keyed by dataset."""
    with open(path, newline="") as fh:
        return {row["dataset"]: row for row in csv.DictReader(fh)}


def test_test_scores_each_source_for_what_its_ground_truth_holds(tmp_path):
    """Metric depth: unaligned metrics and boundary F1; relative depth: aligned AbsRel / delta1 only; focal-only
    photos: focal error; mattes: boundary recall; images with no pixel in range: counted and listed; the seam
    ratio of every prediction, that of the ground truth where it holds depth."""
    metric = write_synthetic_shards(tmp_path / "m", "metric", 2, size=(64, 64), seed=3, progress=False)
    photos = write(tmp_path / "p", "photos", [depth_free(f"p-{i}") for i in range(2)])
    mattes = write(tmp_path / "a", "mattes", [depth_free(f"a-{i}", f_px=None, alpha=True) for i in range(2)])
    sources = [{"name": "metric", "urls": str(metric)}, {"name": "relative", "urls": str(metric), "metric": False},
               {"name": "photos", "urls": str(photos)}, {"name": "mattes", "urls": str(mattes)},
               {"name": "far", "urls": str(metric), "depth_range": [5e3, 1e4]}]
    assert main(["test", "--recipe", str(tiny_recipe(tmp_path, {"test_sources": sources}))]) == 0
    rows = read_rows(tmp_path / "report" / "per_dataset.csv")
    finite = {name: {k for k, v in row.items() if v not in ("", "0") and k not in ("dataset", "n_images")}
              for name, row in rows.items()}
    assert {"abs_rel", "delta1", "boundary_f1", "focal_median_rel_error"} <= finite["metric"]
    assert {"abs_rel_aligned", "delta1_aligned"} <= finite["relative"] and "abs_rel" not in finite["relative"]
    assert "abs_rel_aligned" not in finite["metric"]
    assert finite["photos"] >= {"focal_median_rel_error"} and "abs_rel" not in finite["photos"]
    assert "boundary_recall" in finite["mattes"] and "abs_rel" not in finite["mattes"]
    assert rows["far"]["empty_images"] == "2" and rows["far"]["abs_rel"] == ""
    assert all(rows[name]["n_images"] == "2" for name in rows)
    assert all("seam_ratio" in finite[name] for name in rows)  # the prediction's: every image has one
    assert {name for name in rows if "seam_ratio_gt" in finite[name]} == {"metric", "relative"}  # dense depth
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## 2 images with nothing to score" in report


def test_validation_during_fit_scores_relative_samples_aligned_at_the_network_resolution():
    """Validation inside `fit` has no native ground truth: the relative target (inverse-depth-like, as trained
    on) is what the prediction is aligned to."""
    target = torch.linspace(0.5, 2.0, 64).reshape(1, 1, 8, 8)
    batch = {"image": torch.zeros(1, 3, 8, 8), "target": target, "valid": torch.ones_like(target, dtype=torch.bool),
             "f_px": torch.zeros(1), "metric": torch.tensor([False]), "has_depth": torch.tensor([True]),
             "has_alpha": torch.tensor([False]), "sparse": torch.tensor([False])}
    (image,) = evaluated_images(0.25 * target + 0.3, batch, torch.tensor([True]))
    assert not image.has_depth and not image.is_empty and image.relative_valid.all()
    values = depth_metrics(*(x[None] for x in image.aligned()))
    assert float(values["abs_rel"][0]) < 1e-5 and float(values["delta1"][0]) == 1.0


@pytest.mark.parametrize("command", ["test", "validate"])
def test_evaluating_exported_weights_takes_the_shape_they_record(tmp_path, command):
    """`test --weights my_export.safetensors` with an evaluation recipe written for another network (eval.yaml
    names depth_pro_l) evaluates the exported network, as `--ckpt_path` and `predict` do."""
    from dp_train.model import build_depth_pro, save_weights
    from dp_train.model.config import DepthProConfig

    index = write_synthetic_shards(tmp_path / "s", "s", 2, size=(64, 64), seed=5, progress=False)
    weights = tmp_path / "export.safetensors"
    save_weights(build_depth_pro(DepthProConfig.preset("tiny", **{k: tuple(v) if isinstance(v, list) else v
                                                                   for k, v in NETWORK.items()})), weights)
    sources = {f"{'test' if command == 'test' else 'val'}_sources": [{"name": "s", "urls": str(index)}]}
    recipe = tiny_recipe(tmp_path, sources, network={"vit_img_size": 128, "decoder_features": 32})
    assert main([command, "--recipe", str(recipe), "--weights", str(weights)]) == 0
