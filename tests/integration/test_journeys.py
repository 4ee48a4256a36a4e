"""User journeys end to end, on tiny data: the README's commands chained as a user types them, asserting on what
the user gets.

Every journey runs in its own working folder that looks like a checkout (`recipes/` and `weights/` link to the
repository's), so the commands are the README's own (`--recipe recipes/finetune.yaml`, `weights/...`, `shards/<name>/`,
`runs/<recipe>/checkpoints/last.ckpt`), and the real recipe is run with a tiny override layered after it (as
tests/integration/test_training.py layers its overrides on quickstart.yaml): the quick start's network (the `tiny` preset at
vit_img_size 128, the shape of the shipped `weights/toy_start.safetensors`, which stands in for `depth_pro.pt` and
DINOv2), one CPU process, a few steps, CSV logs.

Each test's docstring names the README section (or docs/ file) whose journey it follows. Cost: about 255 CPU-seconds for the
file (16 tests, 17 `fit`s; 6 min wall on the project's 2-core VM while other jobs shared it, load ~4); most of it
is the paper's recipes (stage 1, stage 2, the curriculum and 11 ablations at two steps each: ~12 CPU-s per `fit`,
half of it LightningCLI parsing the full-size recipes) and the FOV stage's 12 steps.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dp_train.cli.main import main
from dp_train.synth import render_scene
from tests.helpers.cli import REPO, run_dp_train

QUICKSTART_MODEL = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())["model"]
TINY_NETWORK = dict(QUICKSTART_MODEL["network"]) | {"dinov2_weights": None, "grad_checkpointing": False}
"""The shape of the shipped toy start (the quick start's network), built without DINOv2 and run without checkpointing."""
IMAGE_SIZE = 4 * TINY_NETWORK["vit_img_size"]


# ----------------------------------------------------------------------------- helpers


def checkout(path: Path) -> Path:
    """A working folder laid out like the repository root, as the README's commands expect: `recipes/` and
    `weights/` are the repository's (linked), `shards/` and `runs/` are the journey's own."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("recipes", "weights"):
        if not (path / name).exists():
            (path / name).symlink_to(REPO / name)
    return path


def tiny_override(path: Path, name: str, steps: int, **sections: dict) -> Path:
    """Write a tiny override for a full-size recipe: one CPU process in float32, eager (no compile), `steps` steps logged every step to
    CSV (`runs/<name>/csv`), no sanity validation, the toy start's network shape, batch 1 at the network's input
    size, no data workers, no gradient accumulation. `sections` (`trainer`, `model`, `data`, top-level keys) are merged on top, key by key."""
    override = {
        "trainer": {
            "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true",
            "max_steps": steps, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": f"runs/{name}", "name": "csv"}},
        },
        "model": {"preset": QUICKSTART_MODEL["preset"], "network": TINY_NETWORK, "compile": False,
                  "channels_last": False},
        "data": {"image_size": IMAGE_SIZE, "batch_size": 1, "global_batch_size": None, "num_workers": 0,
                 "pin_memory": False},
    }
    for key, values in sections.items():
        override[key] = override.get(key, {}) | values if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(override, sort_keys=False))
    return path


def logged(work: Path, name: str, metric: str) -> dict[int, float]:
    """{step: value} of one metric in the CSV log of `tiny_override(..., name)`'s last version."""
    versions = sorted((work / "runs" / name / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    with open(versions[-1] / "metrics.csv") as fh:
        return {int(r["step"]): float(r[metric]) for r in csv.DictReader(fh) if r.get(metric)}


def csv_columns(work: Path, name: str) -> list[str]:
    """The metric names in the CSV log of `tiny_override(..., name)`'s last version."""
    versions = sorted((work / "runs" / name / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    with open(versions[-1] / "metrics.csv") as fh:
        return next(csv.reader(fh))


LOSS_TERMS = ("mae", "mse", "mage", "male", "msge")


def loss_terms(work: Path, name: str) -> set[str]:
    """The depth loss terms a run logged (every weighted term, and MAE always)."""
    return {c.removeprefix("train/") for c in csv_columns(work, name)} & set(LOSS_TERMS)


def per_source(work: Path, name: str) -> dict[str, dict[int, float]]:
    """{source: {step: samples in the batch}} of a run's training sources."""
    return {c.removeprefix("train/samples_"): logged(work, name, c) for c in csv_columns(work, name)
            if c.startswith("train/samples_") and c != "train/samples_per_s"}


def run_command(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m dp_train ARGV` from `cwd`, as typed (the checkout importable, as after `pip install -e .`); must
    succeed."""
    done = run_dp_train(*argv, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def fit(*argv: str) -> None:
    """`python -m dp_train fit ARGV` (in the current folder); must succeed."""
    assert main(["fit", *argv]) == 0


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    """No recipe's wandb logger may reach the network (the overrides log to CSV anyway)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")


# ----------------------------------------------------------------------------- 1. fine-tuning on your data

MM_PNG_MAX_M = 65.535
"""A 16-bit PNG in millimetres holds at most 65.535 m: farther pixels are stored as 0 (invalid), as a sensor would."""


def write_inhouse_folder(root: Path, seeds: range, size: tuple[int, int]) -> dict[str, dict]:
    """An in-house dataset as README's "Fine-tuning on your data" expects it: `rgb/` (JPEG and PNG photos),
    `depth/` (16-bit PNG in millimetres, 0 = invalid) and `focals.csv` (`stem,f_px`, with a header). The photos
    are procedural scenes with exact metric depth (dp_train.synth; seeds that neither the toy start nor the quick
    start trained on). Returns {stem: {"f_px", "depth_m", "image"}}, the ground truth in metres."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    truth = {}
    for i, seed in enumerate(seeds):
        sample = render_scene(seed, size)
        stem = f"room_{seed}"
        depth_mm = np.rint(np.where(sample.valid & (sample.depth < MM_PNG_MAX_M), sample.depth, 0.0) * 1000)
        image = root / "rgb" / (f"{stem}.png" if i % 2 else f"{stem}.jpg")
        Image.fromarray(sample.image).save(image, **({} if i % 2 else {"quality": 95}))
        Image.fromarray(depth_mm.astype(np.uint16)).save(root / "depth" / f"{stem}.png")
        truth[stem] = {"f_px": sample.meta.f_px, "depth_m": depth_mm / 1000, "image": image}
    rows = "".join(f"{stem},{t['f_px']:.4f}\n" for stem, t in truth.items())
    (root / "focals.csv").write_text("stem,f_px\n" + rows)
    return truth


def median_ratio(pred: np.ndarray, gt: np.ndarray) -> float:
    """Median of pred / gt over the ground truth's valid pixels."""
    valid = gt > 0
    return float(np.median(pred[valid] / gt[valid]))


def decoded(index: Path) -> dict:
    """Every sample of a shard set, decoded by the schema, by key."""
    import webdataset as wds

    from dp_train.shards import decode_sample, shard_urls

    return {s.key: s for s in map(decode_sample, wds.WebDataset(shard_urls(index), shardshuffle=False))}


SCALE_BOUND = 2.0
"""How far the predicted metric depth of a held-out photo may be from the truth (median pred / gt, either way).
Measured when this test was written: 1.007, 0.981 and 0.732 on the three held-out scenes, after 2 fine-tuning steps
from the toy start at finetune.yaml's learning rates, which leave the start's scale as it was (results/quickstart.md:
the start's per-image scale is off by a median 9 %). A factor 2 keeps that spread with room and fails what a broken
pipeline gives: millimetres taken for metres (x 1000 or / 1000) in make_shards or predict, and a focal length
that does not follow the image to the network's input (x or / 4: the held-out photos are 128 px wide, the network
sees 512 px). That `--f-px` is what sets the scale is checked exactly, against a run without it."""


@pytest.mark.slow
def test_finetune_on_your_data_then_export_and_predict_metric_depth(tmp_path):
    """README "Fine-tuning on your data": 1. convert a folder (16-bit PNG depth in mm, a focal CSV) with
    `python -m dp_train make_shards`, for training and for `finetune.yaml`'s validation source; 2. `fit --recipe
    recipes/finetune.yaml` (the toy start standing in for depth_pro.pt); 3. `export` to .safetensors; then the README's `predict` on the
    held-out photos with their true focal length: the user gets metric depth at the ground truth's scale."""
    work = checkout(tmp_path / "work")
    # README's step 1 converts the training folder only, but finetune.yaml also validates on
    # shards/mydata_val/mydata_val.index.json: without it `fit` stops with "error: data.val_sources: ...
    # cannot read shard index". The held-out photos are converted to that set here.
    train = write_inhouse_folder(tmp_path / "my", range(7_000_000, 7_000_004), (144, 192))
    held_out = write_inhouse_folder(tmp_path / "my_val", range(7_100_000, 7_100_003), (96, 128))
    # finetune.yaml's guard sets are iBims-1 and ETH3D; the README's alternative, a held-out set of the user's own
    # from another domain, stands in for them (its own scenes and size)
    write_inhouse_folder(tmp_path / "my_other", range(7_150_000, 7_150_002), (128, 96))
    for folder, dataset in (("my", "mydata"), ("my_val", "mydata_val"), ("my_other", "otherdomain")):
        done = run_command("make_shards", "--images", f"{tmp_path / folder}/rgb", "--depth",
                        f"{tmp_path / folder}/depth", "--units", "mm", "--png-scale", "1", "--focal-file",
                        f"{tmp_path / folder}/focals.csv", "--dataset", dataset, "--out", f"shards/{dataset}", cwd=work)
        assert "FOV" in done.stdout  # the closing report shows the implied field of view
    assert json.loads((work / "shards/mydata/mydata.report.json").read_text())["samples_written"] == len(train)
    for key, sample in decoded(work / "shards/mydata_val/mydata_val.index.json").items():  # metres, exact focal
        truth = held_out[key]
        assert sample.meta.metric and sample.meta.f_px == pytest.approx(truth["f_px"], rel=1e-6)
        np.testing.assert_allclose(sample.depth[sample.valid], truth["depth_m"][sample.valid], rtol=1e-3)

    override = tiny_override(work / "tiny_override.yaml", "finetune", steps=2,
                             model={"init_from": "weights/toy_start.safetensors"},
                             data={"guard_sources": [{"name": "otherdomain",
                                                      "urls": "shards/otherdomain/otherdomain.index.json"}]})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        fit("--recipe", "recipes/finetune.yaml", "--recipe", str(override))
        assert main(["export", "--ckpt", "runs/finetune/checkpoints/last.ckpt", "--out", "w.safetensors"]) == 0
        for stem, truth in held_out.items():
            assert main(["predict", "--weights", "w.safetensors", "--input", str(truth["image"]), "--output",
                         f"out/{stem}", "--f-px", str(truth["f_px"])]) == 0
        assert main(["predict", "--weights", "w.safetensors", "--input", str(tmp_path / "my_val" / "rgb"),
                     "--output", "out_fov_head"]) == 0
    assert sorted(logged(work, "finetune", "train/loss")) == [0, 1]
    assert list(logged(work, "finetune", "val/otherdomain/abs_rel")) == [0]  # the guard's start, before training

    estimated = {Path(r["input"]).stem: r for r in json.loads((work / "out_fov_head/summary.json").read_text())["images"]}
    ratios = {}
    for stem, truth in held_out.items():
        pred = np.load(work / "out" / stem / f"{stem}.npy")
        assert pred.shape == truth["depth_m"].shape and np.isfinite(pred).all()
        ratios[stem] = median_ratio(pred, truth["depth_m"])
        # depth is proportional to the focal length used: the given one, not the FOV head's
        assert estimated[stem]["focal_source"] == "estimated"
        without = np.load(work / "out_fov_head" / f"{stem}.npy")
        np.testing.assert_allclose(pred / without, truth["f_px"] / estimated[stem]["focal_px"], rtol=1e-4)
    assert all(1 / SCALE_BOUND < r < SCALE_BOUND for r in ratios.values()), ratios


# ----------------------------------------------------------------------------- 2. the FOV stage on photos

FOCAL_SEEDS = range(7_200_000, 7_200_004)


def write_exif_photos(folder: Path, seeds: range, size: tuple[int, int] = (96, 128)) -> dict[str, float]:
    """JPEG photos of procedural scenes (whose horizontal FOV is drawn from 30-100 degrees) with the scene's focal
    length in EXIF as a camera writes it: FocalLengthIn35mmFilm (whole millimetres, on the 43.27 mm diagonal).
    Returns {stem: f_px the EXIF tag implies}, what make_shards must store."""
    from tests.helpers.convert_fixtures import write_photo

    focal = {}
    for seed in seeds:
        sample = render_scene(seed, size)
        f35 = round(sample.meta.f_px * math.hypot(36, 24) / math.hypot(size[1], size[0]))
        write_photo(folder / f"IMG_{seed}.jpg", 0, f35, pixels=sample.image)
        focal[f"IMG_{seed}"] = f35 * math.hypot(size[1], size[0]) / math.hypot(36, 24)
    return focal


def best_constant_error(focals: list[float]) -> float:
    """The lowest median relative focal error any one focal length for every photo scores (a fine search between
    the smallest and largest focal length, where the optimum lies)."""
    f = np.asarray(focals)
    guesses = np.geomspace(f.min(), f.max(), 4001)
    return float(np.min(np.median(np.abs(guesses[:, None] - f[None]) / f[None], axis=1)))


@pytest.mark.slow
def test_fov_stage_on_exif_photos_fits_their_focal_lengths(tmp_path):
    """README "Fine-tuning on your data", step 1 without `--depth` (a focal-only photo set, focal length from
    EXIF), then `fit --recipe recipes/fov.yaml` (Recipes: "the FOV head and its ViT trained on known focal lengths
    (depth sets and focal-only photo sets)"). A mechanism check: on the photos it trains on, the FOV head's median
    relative focal error ends below the best a single focal length for all of them can score (their FOVs span
    30-100 degrees, so no constant fits), and below the head's own error before training."""
    work = checkout(tmp_path / "work")
    focal = write_exif_photos(tmp_path / "flickr_photos", FOCAL_SEEDS)
    run_command("make_shards", "--images", str(tmp_path / "flickr_photos"), "--dataset", "photos", "--out",
             "shards/photos", cwd=work)
    photos = decoded(work / "shards/photos/photos.index.json")
    assert {k: s.meta.f_px for k, s in photos.items()} == pytest.approx(focal, rel=1e-6)
    constant = best_constant_error(list(focal.values()))

    steps = 12
    override = tiny_override(
        work / "tiny_override.yaml", "fov", steps=steps, report_validation=True,
        trainer={"val_check_interval": steps, "check_val_every_n_epoch": None},
        # every photo in every batch at a constant learning rate that fits them in a few steps (fov.yaml's are
        # for 20k steps: at 1e-3 the error moved from 0.34 to 0.30 in 15 steps); whole frames, no colour change:
        # the head is scored on the photos exactly as it trained on them
        model={"init_from": "weights/toy_start.safetensors", "lr_encoder": 1e-2, "lr_decoder": 1e-2,
               "warmup_steps": 0, "decay_at": 1.0},
        data={"train_sources": [{"name": "photos", "urls": "shards/photos/photos.index.json"}],
              "val_sources": [{"name": "photos_val", "urls": "shards/photos/photos.index.json"}],
              "batch_size": len(focal), "augment": {"center_crop_prob": 0.0, "color_jitter_prob": 0.0,
                                                    "blur_prob": 0.0}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        fit("--recipe", "recipes/fov.yaml", "--recipe", str(override))
    errors = logged(work, "fov", "val/median_rel_error")
    before, after = errors[min(errors)], errors[max(errors)]
    print(f"median relative focal error: best constant {constant:.3f}, head before {before:.3f}, after {after:.3f}")
    assert after < 0.5 * constant and after < 0.5 * before


# ----------------------------------------------------------------------------- 3. evaluation on every kind of set


def convert(fmt: str, root: Path, out: str, *extra: str) -> None:
    """`python -m dp_train convert FORMAT --root ROOT --out OUT ...` (in-process), must succeed."""
    assert main(["convert", fmt, "--root", str(root), "--out", out, "--workers", "1", *extra]) == 0


def write_relative_folder(root: Path, seeds: range, units: str, size: tuple[int, int] = (48, 64)) -> None:
    """A folder for `make_shards --units relative|disparity`: `rgb/` PNGs and `depth/` float32 .npy maps known
    only up to scale and shift (relative: 0.37 x depth + 2) or as inverse depth (disparity: 5 / depth), as
    HRWSI-like relative sets come."""
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for seed in seeds:
        sample = render_scene(seed, size)
        depth = np.where(sample.valid, sample.depth, np.nan)
        values = 0.37 * depth + 2.0 if units == "relative" else 5.0 / depth
        Image.fromarray(sample.image).save(root / "rgb" / f"{seed}.png")
        np.save(root / "depth" / f"{seed}.npy", np.nan_to_num(values, nan=0.0).astype(np.float32))


KIND_METRICS = {
    "depth": ["abs_rel", "delta1", "boundary_f1"],
    "matte": ["boundary_recall"],
    "focal": ["focal_median_rel_error"],
    "relative": ["abs_rel_aligned", "delta1_aligned"],
}
"""What per_dataset.csv (and report.md) must fill per kind of set (docs/data.md, "Kinds of sample": "Each kind of
sample feeds what its ground truth supports", and docs/evaluation.md)."""


@pytest.mark.slow
def test_evaluate_every_kind_of_converted_set_with_a_report(tmp_path):
    """docs/evaluation.md: convert benchmarks with `python -m dp_train convert` (the converters' own tiny
    fixtures: Middlebury and Sintel depth, DIS5K and a matting set's mattes, a focal-length photo folder) and
    relative sets with `make_shards --units relative|disparity`, list them as `data.test_sources`, and run
    `python -m dp_train test --recipe recipes/eval.yaml --weights ...`: every set is scored for what its kind
    feeds, and `report.md` is filled where data exists."""
    from tests.helpers.convert_fixtures import (COLS, ROWS, depth_map, write_matte_pair, write_middlebury,
                                                write_photo, write_sintel_frame)

    work = checkout(tmp_path / "work")
    data = tmp_path / "data"
    for i, scene in enumerate(["Adirondack-perfect", "Bicycle1-perfect"]):
        write_middlebury(data / "middlebury" / scene, 100.0 + i, (10 + COLS + 2 * ROWS).astype(np.float32), i)
    for i, frame in enumerate(["frame_0001", "frame_0002"]):
        write_sintel_frame(data / "sintel", "alley_1", frame, i, 50.0 + i, depth_map(i + 1))
    alpha = np.where(COLS < 4, 255, 0).astype(np.uint8)
    for i, stem in enumerate(["1#Accessories#1", "2#Animal#3"]):
        write_matte_pair(data / "DIS5K" / "DIS-TE1", stem, i, alpha)
        write_matte_pair(data / "am2k" / "validation", f"m_{i}", i, alpha, image_dir="original", alpha_dir="mask")
    for i, focal_35mm in enumerate([24, 85]):
        write_photo(data / "zoom" / f"IMG_{i}.jpg", i, focal_35mm)
    write_relative_folder(data / "hrwsi", range(7_300_000, 7_300_002), "relative")
    write_relative_folder(data / "kenburns", range(7_300_002, 7_300_004), "disparity")

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        convert("middlebury", data / "middlebury", "shards/middlebury")
        convert("sintel", data / "sintel", "shards/sintel")
        convert("dis5k", data / "DIS5K", "shards/dis5k", "--split", "DIS-TE1")
        convert("matting", data / "am2k", "shards/am2k", "--split", "validation", "--image-dir", "original",
                "--alpha-dir", "mask", "--dataset", "am2k")
        convert("focal", data / "zoom", "shards/zoom", "--dataset", "zoom")
    for name, units in (("hrwsi", "relative"), ("kenburns", "disparity")):
        run_command("make_shards", "--images", str(data / name / "rgb"), "--depth", str(data / name / "depth"),
                 "--units", units, "--dataset", name, "--out", f"shards/{name}", cwd=work)

    kinds = {"middlebury": "depth", "sintel": "depth", "dis5k": "matte", "am2k": "matte", "zoom": "focal",
             "hrwsi": "relative", "kenburns": "relative"}
    sequences = {"sintel"}  # as recipes/eval.yaml flags it: its frames are a clip's
    sources = [{"name": name, "urls": f"shards/{name}/{name}.index.json", "sequence": name in sequences}
               for name in kinds]
    override = tiny_override(work / "tiny_override.yaml", "eval", steps=1, data={"test_sources": sources})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        assert main(["test", "--recipe", "recipes/eval.yaml", "--recipe", str(override),
                     "--weights", "weights/toy_start.safetensors"]) == 0

    report = work / "runs" / "eval" / "report"
    with open(report / "per_dataset.csv") as fh:
        rows = {r["dataset"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(kinds)
    for name, kind in kinds.items():
        assert int(rows[name]["n_images"]) == 2, name
        for metric in KIND_METRICS[kind]:
            assert rows[name][metric] and math.isfinite(float(rows[name][metric])), (name, metric)
    assert float(rows["sintel"]["temporal_pairs"]) == 1 and math.isfinite(float(rows["sintel"]["temporal_change"]))
    table = (report / "report.md").read_text().split("## ")[0]  # the per-dataset table, before the paper's
    assert all(f"| {name} | 2 |" in table for name in kinds)
    # the paper's tables, for the sets named as the paper's benchmarks
    for paper_table, columns in (("tab1_delta1", ["middlebury", "sintel"]), ("tab2_boundaries", ["sintel F1",
                                 "am2k R", "dis5k R"]), ("tab3_focal", ["zoom δ25", "zoom δ50"])):
        with open(report / f"paper_{paper_table}.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert all(rows[0][c] and math.isfinite(float(rows[0][c])) for c in columns), paper_table


# ----------------------------------------------------------------------------- 4. the paper's recipes

PAPER_RECIPES = {name: yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
                 for name in ("stage1", "stage2", "curriculum")}
ABLATIONS = sorted(p.stem for p in (REPO / "recipes" / "ablations").glob("*.yaml"))
IMPRINT_LR = 1e-2
"""Stage 1's learning rate here: large enough that its two steps move the weights ~100 times more than stage 2's
two steps at stage2.yaml's rates (1.28e-4), so stage 2's weights show which start they came from."""


def recipe_command(recipe: Path) -> list[str]:
    """The `--recipe` arguments of the `python -m dp_train fit ...` line in a recipe's header."""
    for line in recipe.read_text().splitlines():
        if line.startswith("#") and "python -m dp_train fit" in line:
            words = line.split()
            return words[words.index("fit") + 1:]
    raise AssertionError(f"{recipe} has no launch line in its header")


@pytest.fixture(scope="module")
def paper_workspace(tmp_path_factory) -> Path:
    """A checkout whose `shards/<name>/<name>.index.json` holds a tiny rendered set for every source of the
    paper's recipes (stage 1's 19 training sets and the 3 validation sets; stage 2's and the curriculum's are
    among them), so the recipes run with their own `data` sections, as a user with every set converted would."""
    from dp_train.synth import write_synthetic_shards

    work = checkout(tmp_path_factory.mktemp("paper") / "work")
    data = PAPER_RECIPES["stage1"]["data"]
    for i, source in enumerate(data["train_sources"] + data["val_sources"]):
        index = write_synthetic_shards(work / "shards" / source["name"], source["name"], 2, size=(48, 64),
                                       seed=7_400_000 + 10 * i, progress=False)
        assert index == work / source["urls"]
    return work


def paper_override(work: Path, name: str, steps: int, recipes: list[str], **sections: dict) -> Path:
    """The tiny override of the paper's recipes: the toy start where the layered recipes start from DINOv2 (no
    `model.init_from`)."""
    starts = [yaml.safe_load((work / r).read_text()).get("model", {}).get("init_from") for r in recipes]
    model = {} if any(starts) else {"init_from": "weights/toy_start.safetensors"}
    sections["model"] = model | sections.get("model", {})
    return tiny_override(work / f"tiny_{name}.yaml", name, steps, **sections)


def trained_weights(path: Path) -> dict[str, torch.Tensor]:
    """The network tensors of a training checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


@pytest.fixture(scope="module")
def stage1_run(paper_workspace: Path) -> Path:
    """`fit --recipe recipes/stage1.yaml` for two steps from the toy start (at IMPRINT_LR): its last.ckpt where
    stage2.yaml and the stage-2 ablations look for it."""
    work = paper_workspace
    override = paper_override(work, "stage1", 2, ["recipes/stage1.yaml"],
                              model={"lr_encoder": IMPRINT_LR, "lr_decoder": IMPRINT_LR})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        fit("--recipe", "recipes/stage1.yaml", "--recipe", str(override))
    return work / "runs" / "stage1" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_stage1_then_stage2_from_its_checkpoint(paper_workspace, stage1_run):
    """README "Recipes": `stage1.yaml`, then `stage2.yaml` "from stage 1's checkpoint" (its `model.init_from:
    runs/stage1/checkpoints/last.ckpt`): stage 2 starts from stage 1's weights and trains with stage 2's
    objective (MAE + MSE + MAGE + MALE + MSGE) on its 9 synthetic sets."""
    work = paper_workspace
    assert loss_terms(work, "stage1") == {"mae", "mage"}  # 1C

    override = paper_override(work, "stage2", 2, ["recipes/stage2.yaml"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        fit("--recipe", "recipes/stage2.yaml", "--recipe", str(override))
    assert loss_terms(work, "stage2") == set(LOSS_TERMS)  # 2A
    for term in LOSS_TERMS:
        assert set(logged(work, "stage2", f"train/{term}")) == {0, 1}, term
    assert set(per_source(work, "stage2")) == {s["name"] for s in PAPER_RECIPES["stage2"]["data"]["train_sources"]}

    from safetensors.torch import load_file

    start = load_file(REPO / "weights" / "toy_start.safetensors")
    stage1, stage2 = trained_weights(stage1_run), trained_weights(work / "runs/stage2/checkpoints/last.ckpt")
    head = "head.0.weight"
    assert (stage2[head] - stage1[head]).abs().max() < 0.1 * IMPRINT_LR  # two small steps from stage 1's weights
    assert (stage2[head] - start[head]).abs().max() > IMPRINT_LR  # not from the toy start


@pytest.mark.slow
def test_curriculum_switches_objective_and_mixture_at_the_stage_step(paper_workspace):
    """README "Recipes": `curriculum.yaml`, both stages in one job switched by the curriculum callback, with the
    switch step moved as docs/sweeps.md moves it (`--trainer.callbacks.init_args.stages.start_step`,
    the last stage of the last callback): at the switch, stage 2's objective and its 9-set mixture are in force,
    and the checkpoint holds stage 2."""
    work = paper_workspace
    switch, steps = 2, 3
    override = paper_override(work, "curriculum", steps, ["recipes/curriculum.yaml"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        fit("--recipe", "recipes/curriculum.yaml", "--recipe", str(override),
            f"--trainer.callbacks.init_args.stages.start_step={switch}")
    stage = logged(work, "curriculum", "curriculum/stage")
    assert [stage[s] for s in range(steps)] == [0.0] * switch + [1.0] * (steps - switch)
    assert set(logged(work, "curriculum", "train/msge")) == set(range(switch, steps))  # stage 2's objective
    mixture = PAPER_RECIPES["curriculum"]["trainer"]["callbacks"][-1]["init_args"]["stages"][-1]["mixture"]
    samples = per_source(work, "curriculum")
    assert len(samples) == len(PAPER_RECIPES["curriculum"]["data"]["train_sources"])
    for step in range(switch, steps):  # the batch comes from stage 2's sets only
        assert sum(counts[step] for source, counts in samples.items() if source not in mixture) == 0
        assert sum(counts[step] for source, counts in samples.items() if source in mixture) == 1
    checkpoint = torch.load(work / "runs/curriculum/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    curriculum = [v for k, v in checkpoint["callbacks"].items() if k.startswith("CurriculumCallback")]
    assert curriculum == [{"entered": 1}]


@pytest.mark.slow
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_each_ablation_recipe_runs_two_steps_with_its_objective(paper_workspace, stage1_run, ablation):
    """README "Recipes": `ablations/*.yaml`, each run the way its header says (`fit --recipe <stage> --recipe
    recipes/ablations/<x>.yaml`) for two steps: it trains with its own loss table and checkpoints where it says."""
    work = paper_workspace
    recipes = [a for a in recipe_command(REPO / "recipes" / "ablations" / f"{ablation}.yaml") if a != "--recipe"]
    override = paper_override(work, f"ablation_{ablation}", 2, recipes)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        fit(*[w for r in recipes for w in ("--recipe", r)], "--recipe", str(override))
    loss = yaml.safe_load((REPO / "recipes" / "ablations" / f"{ablation}.yaml").read_text()).get("model", {}).get("loss")
    if loss is not None:
        weighted = {t for t, w in loss.items() if (w["weight"] if isinstance(w, dict) else w)} | {"mae"}
        assert loss_terms(work, f"ablation_{ablation}") == weighted
    checkpoint = work / "runs" / "ablations" / ablation / "checkpoints" / "last.ckpt"
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    if loss is not None:  # the recipe's terms as it sets them; terms it does not name (ours) stay off
        assert {term: hparams["loss"][term] for term in loss} == loss
        assert all(hparams["loss"][term] == 0 for term in set(hparams["loss"]) - set(loss))
