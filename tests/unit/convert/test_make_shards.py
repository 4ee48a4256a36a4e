"""make_shards: folder of images + depth maps (or photos with a focal length only) -> validated shards, report and
skip list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dp_train.convert.make_shards import main
from dp_train.convert.readers import read_pfm
from dp_train.utils.exif import (
    EXIF_IFD,
    FOCAL_35MM,
    FOCAL_LENGTH,
    FOCAL_PLANE_RESOLUTION_UNIT,
    FOCAL_PLANE_X_RESOLUTION,
    PIXEL_X_DIMENSION,
    focal_px_from_tags,
)
from dp_train.shards import Sample, decode_sample, read_index, shard_urls
from tests.helpers.paths import REPO

H, W = 12, 16
PNG_SCALE = 0.1  # cm per 16-bit count in the test PNGs


def write_pfm(path: Path, arr: np.ndarray, big_endian: bool = False) -> None:
    """Minimal PFM writer, independent of the reader under test: rows bottom to top."""
    kind = b"PF" if arr.ndim == 3 else b"Pf"
    h, w = arr.shape[:2]
    with open(path, "wb") as f:
        f.write(kind + f"\n{w} {h}\n{1.0 if big_endian else -1.0}\n".encode())
        f.write(arr[::-1].astype(">f4" if big_endian else "<f4").tobytes())


def _image(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _depth_cm(seed: int) -> np.ndarray:
    return np.random.default_rng(100 + seed).uniform(50, 900, (H, W))


@pytest.fixture
def dataset(tmp_path: Path) -> dict:
    """6 images: npy, png16 and pfm depth (in cm), a size mismatch, NaN-only depth, no depth."""
    img, dep = tmp_path / "rgb", tmp_path / "depth"
    img.mkdir()
    dep.mkdir()
    expected = {}
    for i, stem in enumerate(["a_npy", "b_npy", "c_png", "d_pfm"]):
        _image(img / f"{stem}.{'png' if i % 2 else 'jpg'}", i)
        cm = _depth_cm(i)
        if stem.endswith("npy"):
            cm[0, :3] = [np.nan, 0.0, -5.0]  # invalid pixels inside a good sample
            np.save(dep / f"{stem}.npy", cm)
        elif stem.endswith("png"):
            counts = np.rint(cm / PNG_SCALE).astype(np.uint16)
            Image.fromarray(counts).save(dep / f"{stem}.png")
            cm = counts.astype(np.float64) * PNG_SCALE
        else:
            cm = cm.astype(np.float32)
            write_pfm(dep / f"{stem}.pfm", cm)
        expected[stem] = cm
    _image(img / "e_mismatch.jpg", 10)
    np.save(dep / "e_mismatch.npy", np.ones((H - 2, W)))
    _image(img / "f_nan.jpg", 11)
    np.save(dep / "f_nan.npy", np.full((H, W), np.nan))
    _image(img / "g_orphan.jpg", 12)
    return {"root": tmp_path, "images": img, "depth": dep, "expected_cm": expected}


def _args(ds: dict, out: Path, *extra: str) -> list[str]:
    return ["--images", str(ds["images"]), "--depth", str(ds["depth"]), "--out", str(out),
            "--dataset", "toy", "--png-scale", str(PNG_SCALE), *extra]


def _load(index: Path) -> dict[str, Sample]:
    urls = shard_urls(index)
    return {s.key: s for s in map(decode_sample, wds.WebDataset(urls, shardshuffle=False))}


def test_convert_skips_bad_samples_and_converts_cm_exactly(dataset, capsys):
    out = dataset["root"] / "out"
    rc = main(_args(dataset, out, "--units", "cm", "--f-px", "20", "--depth-format", "npy32",
                    "--samples-per-shard", "3", "--workers", "1"))
    assert rc == 0
    printed = capsys.readouterr().out
    samples = _load(out / "toy.index.json")
    assert sorted(samples) == ["a_npy", "b_npy", "c_png", "d_pfm"]
    for stem, cm in dataset["expected_cm"].items():
        s = samples[stem]
        metres = (cm.astype(np.float64) / 100).astype(np.float32)
        ok = np.isfinite(metres) & (metres > 0)
        np.testing.assert_array_equal(s.depth[ok], metres[ok])
        np.testing.assert_array_equal(s.valid, ok)
        assert s.depth[~ok].tolist() == [0.0] * int((~ok).sum())
        assert s.meta.metric and s.meta.depth_kind == "depth" and s.meta.f_px == 20.0
    assert [e["samples"] for e in read_index(out / "toy.index.json")["shards"]] == [3, 1]

    skipped = dict(line.split("\t") for line in (out / "toy.skipped.txt").read_text().splitlines())
    assert set(skipped) == {"e_mismatch", "f_nan", "g_orphan"}
    assert "size mismatch" in skipped["e_mismatch"]
    assert "no valid depth" in skipped["f_nan"]
    assert skipped["g_orphan"] == "no depth file"
    assert "skipped e_mismatch: size mismatch" in printed and "FOV" in printed

    report = json.loads((out / "toy.report.json").read_text())
    assert report["samples_written"] == 4 and report["samples_skipped"] == 3
    fov = float(f"{np.degrees(2 * np.arctan(W / (2 * 20.0))):.4g}")
    assert report["hfov_deg"] == {"min": fov, "max": fov}
    assert report["f_px"] == {"min": 20.0, "max": 20.0}
    assert 0.5 <= report["depth"]["min"] <= report["depth"]["p1"] <= report["depth"]["p50"]
    assert report["depth"]["p50"] <= report["depth"]["p99"] <= report["depth"]["max"] <= 9.0
    assert 0.9 < report["mean_valid_share"] < 1.0
    assert not list(out.glob("*.tmp"))


def test_workers_give_identical_shards(dataset):
    outs = []
    for workers in ("1", "2"):
        out = dataset["root"] / f"out{workers}"
        assert main(_args(dataset, out, "--units", "m", "--f-px", "20", "--workers", workers)) == 0
        outs.append(out)
    tars = [sorted(o.glob("*.tar")) for o in outs]
    assert [p.name for p in tars[0]] == [p.name for p in tars[1]] == ["toy-000000.tar"]
    assert tars[0][0].read_bytes() == tars[1][0].read_bytes()


def test_focal_file_mask_sparse_and_disparity(dataset):
    root = dataset["root"]
    (root / "focal.json").write_text(json.dumps({"a_npy": 10.0, "b_npy": 12.0, "c_png": 14.0}))
    masks = root / "masks"
    masks.mkdir()
    for stem in ["a_npy", "b_npy", "c_png", "d_pfm"]:
        m = np.full((H, W), 255, np.uint8)
        m[5:7, 5:9] = 0
        Image.fromarray(m).save(masks / f"{stem}.png")
    out = root / "out"
    rc = main(_args(dataset, out, "--units", "disparity", "--focal-file", str(root / "focal.json"),
                    "--mask-dir", str(masks), "--sparse", "--workers", "1"))
    assert rc == 0
    samples = _load(out / "toy.index.json")
    assert sorted(samples) == ["a_npy", "b_npy", "c_png"]  # d_pfm has no focal length
    a = samples["a_npy"]
    assert not a.valid[5:7, 5:9].any() and a.valid[8].all()
    assert a.meta.f_px == 10.0 and a.meta.sparse and not a.meta.metric
    assert a.meta.depth_kind == "disparity"
    skipped = (out / "toy.skipped.txt").read_text()
    assert "d_pfm\tno focal length in" in skipped
    report = json.loads((out / "toy.report.json").read_text())
    assert report["f_px"] == {"min": 10.0, "max": 14.0}


def test_units_is_required_with_depth(dataset, capsys):
    assert main(_args(dataset, dataset["root"] / "out")) == 2
    assert capsys.readouterr().err.strip() == "error: --units is required with --depth (m, cm, mm, disparity or relative)"


@pytest.mark.parametrize(
    "change, culprit",
    [
        (lambda a, r: a.__setitem__(1, str(r / "missing")), "missing: no such folder"),
        (lambda a, r: a.extend(["--focal-file", str(r / "nofocal.csv")]), "nofocal.csv"),
        (lambda a, r: a.__setitem__(3, str(r)), "no usable image/depth pairs"),
        (lambda a, r: a.__setitem__(a.index("--png-scale") + 1, "-1"), "--png-scale must be positive"),
    ],
)
def test_input_errors_are_one_line_exit_2(dataset, capsys, change, culprit):
    args = _args(dataset, dataset["root"] / "out", "--units", "relative")
    change(args, dataset["root"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and culprit in err


def test_png_depth_needs_scale_and_old_output_is_kept(dataset, capsys):
    args = _args(dataset, dataset["root"] / "out", "--units", "m", "--f-px", "20", "--workers", "1")
    no_scale = args[:args.index("--png-scale")] + args[args.index("--png-scale") + 2:]
    assert main(no_scale) == 2
    assert "--png-scale" in capsys.readouterr().err
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_shards.py"), "--images", str(tmp_path / "x"),
         "--depth", str(tmp_path), "--out", str(tmp_path / "o"), "--dataset", "d", "--units", "mm"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --images {tmp_path / 'x'}: no such folder"


def test_read_pfm_big_endian_colour(tmp_path):
    arr = np.random.default_rng(0).normal(size=(3, 5, 3)).astype(np.float32)
    write_pfm(tmp_path / "c.pfm", arr, big_endian=True)
    np.testing.assert_array_equal(read_pfm(tmp_path / "c.pfm"), arr)


def test_exr_depth(tmp_path):
    openexr = pytest.importorskip("OpenEXR")
    depth = np.random.default_rng(0).uniform(1, 5, (H, W)).astype(np.float32)
    header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    _image(tmp_path / "rgb" / "x.png", 0)
    with openexr.File(header, {"Z": depth}) as f:
        f.write(str(tmp_path / "depth" / "x.exr"))
    rc = main(["--images", str(tmp_path / "rgb"), "--depth", str(tmp_path / "depth"), "--out",
               str(tmp_path / "out"), "--dataset", "exr", "--units", "m", "--f-px", "20", "--depth-format", "npy32",
               "--workers", "1"])
    assert rc == 0
    np.testing.assert_array_equal(_load(tmp_path / "out" / "exr.index.json")["x"].depth, depth)


def test_focal_from_exif_35mm_equivalent_and_sensor_resolution():
    """35 mm equivalent keeps the diagonal angle: f35 / 43.27 mm x diagonal px. Sensor route: f_mm x px/mm,
    scaled to the image when it was resized after capture (PixelXDimension)."""
    assert focal_px_from_tags({FOCAL_35MM: 26}, 4000, 3000) == pytest.approx(26 * 5000 / np.hypot(36, 24))
    sensor = {FOCAL_LENGTH: 4.0, FOCAL_PLANE_X_RESOLUTION: 2540.0, FOCAL_PLANE_RESOLUTION_UNIT: 2,
              PIXEL_X_DIMENSION: 4000}  # 2540 px per inch = 100 px per mm
    assert focal_px_from_tags(sensor, 4000, 3000) == pytest.approx(400.0)
    assert focal_px_from_tags(sensor, 1000, 750) == pytest.approx(100.0)  # downscaled 4x after capture
    assert focal_px_from_tags(sensor | {FOCAL_35MM: 26}, 4000, 3000) != pytest.approx(400.0)  # 35 mm first


def _photo(path: Path, tags: dict, size: tuple[int, int] = (30, 40)) -> None:
    """A JPEG photo with the given Exif-IFD tags."""
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD).update(tags)
    Image.fromarray(np.full((*size, 3), 128, np.uint8)).save(path, "JPEG", exif=exif)


def test_a_photo_folder_without_depth_becomes_a_focal_only_set(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "phone.jpg", {FOCAL_35MM: 28})
    _photo(photos / "camera.jpg", {FOCAL_LENGTH: 5.0, FOCAL_PLANE_X_RESOLUTION: 8.0, FOCAL_PLANE_RESOLUTION_UNIT: 4})
    _photo(photos / "scan.jpg", {})
    out = tmp_path / "out"
    assert main(["--images", str(photos), "--out", str(out), "--dataset", "photos", "--workers", "1"]) == 0
    samples = _load(out / "photos.index.json")
    assert sorted(samples) == ["camera", "phone"]
    assert samples["phone"].meta.f_px == pytest.approx(28 * 50 / np.hypot(36, 24))  # 40 x 30: diagonal 50 px
    assert samples["camera"].meta.f_px == pytest.approx(40.0)  # 5 mm x 8 px/mm
    assert all(not s.valid.any() and not s.meta.metric for s in samples.values())  # no depth to learn from
    assert "skipped scan: no usable EXIF focal length" in capsys.readouterr().out
    assert (out / "photos.skipped.txt").read_text().startswith("scan\tno usable EXIF focal length")


def test_an_image_only_set_keeps_photos_without_a_focal_length(tmp_path, capsys):
    """`--image-only` (distillation's data, docs/distillation.md): every photo, its focal length when known, no
    depth; beside --depth it is one error line."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "phone.jpg", {FOCAL_35MM: 28})
    _photo(photos / "scan.jpg", {})
    out = tmp_path / "out"
    assert main(["--images", str(photos), "--image-only", "--out", str(out), "--dataset", "io", "--workers", "1"]) == 0
    samples = _load(out / "io.index.json")
    assert sorted(samples) == ["phone", "scan"] and samples["scan"].meta.f_px is None
    assert samples["phone"].meta.f_px == pytest.approx(28 * 50 / np.hypot(36, 24))
    assert all(not s.meta.has_depth and not s.valid.any() and not s.meta.metric for s in samples.values())
    assert main(["--images", str(photos), "--depth", str(photos), "--units", "m", "--f-px", "100", "--image-only",
                 "--out", str(tmp_path / "o2"), "--dataset", "io"]) == 2
    assert capsys.readouterr().err.startswith("error: --image-only writes a set without depth")


def test_depth_options_without_depth_are_one_error_line(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    assert main(["--images", str(photos), "--out", str(tmp_path / "o"), "--dataset", "p", "--units", "m"]) == 2
    assert capsys.readouterr().err.startswith("error: --units, --mask-dir and --png-scale describe depth maps")
