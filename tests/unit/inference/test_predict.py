"""Tests for `dp_train predict`: outputs, focal sources, error handling and exit codes."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dp_train.cli.main import main
from dp_train.model import save_weights
from dp_train.utils.exif import focal_35mm_to_px
from dp_train.inference.images import load_image
from dp_train.utils.visualize import colorize_inverse_depth, colormap_lut
from tests.helpers.predict import FOV_DEG, random_image as _image, summary_rows as _summary, tiny_model as _tiny_model

EXIF_FOCAL_35MM = 28
ORIENTATION_ROTATE_90 = 6  # EXIF Orientation: stored image must be rotated 90 degrees to be upright


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Weights (with and without FOV head) and an image folder: png, jpeg+exif focal, rotated JPG, corrupt, sub/."""
    root = tmp_path_factory.mktemp("predict")
    weights, weights_no_fov = root / "tiny.safetensors", root / "tiny_nofov.pt"
    save_weights(_tiny_model(), weights)
    save_weights(_tiny_model(fov_head=False), weights_no_fov)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    _image(96, 64, 0).save(images / "a.png")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = EXIF_FOCAL_35MM
    _image(130, 200, 1).save(images / "b.jpg", exif=exif)
    rotated = Image.Exif()
    rotated[0x0112] = ORIENTATION_ROTATE_90
    _image(80, 48, 2).save(images / "rot.JPG", exif=rotated)
    (images / "bad.jpg").write_bytes(b"this is not a jpeg \x00\x01\x02" * 10)
    (images / "notes.txt").write_text("not an image")
    _image(64, 64, 3).save(images / "sub" / "deep.png")
    return {"root": root, "weights": weights, "weights_no_fov": weights_no_fov, "images": images}


def _predict(ws: dict[str, Path], output: Path, *extra: str, inputs: Path | None = None) -> int:
    """Run `dp_train predict` with the tiny network on CPU."""
    argv = ["predict", "--weights", str(ws["weights"]), "--input", str(inputs or ws["images"]), "--output", str(output)]
    return main([*argv, "--preset", "tiny", "--vit-img-size", "128", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def default_run(workspace: dict[str, Path]) -> tuple[int, Path]:
    """One non-recursive run over the folder without --f-px."""
    output = workspace["root"] / "out" / "nested"  # created with parents
    (workspace["root"] / "out").mkdir()
    (workspace["root"] / "out" / "keep.txt").write_text("untouched")
    return _predict(workspace, output), output


def test_default_run_outputs(default_run: tuple[int, Path]) -> None:
    code, output = default_run
    assert code == 0
    expected_hw = {"a": (64, 96), "b": (200, 130), "rot": (80, 48)}  # rot.JPG is upright after EXIF rotation
    for stem, hw in expected_hw.items():
        depth = np.load(output / f"{stem}.npy")
        assert depth.dtype == np.float32 and depth.shape == hw
        assert np.isfinite(depth).all() and (depth > 0).all()
        with Image.open(output / f"{stem}.png") as png:
            assert png.mode == "RGB" and png.size == (hw[1], hw[0])
    assert not (output / "bad.npy").exists() and not (output / "deep.npy").exists()
    assert (output.parent / "keep.txt").read_text() == "untouched"


def test_default_run_summary(default_run: tuple[int, Path]) -> None:
    _, output = default_run
    rows = _summary(output)
    assert set(rows) == {"a.png", "b.jpg", "bad.jpg", "rot.JPG"}
    assert rows["b.jpg"]["focal_source"] == "exif"
    assert rows["b.jpg"]["focal_px"] == pytest.approx(EXIF_FOCAL_35MM * math.hypot(130, 200) / math.hypot(36, 24))
    for name, width in (("a.png", 96), ("rot.JPG", 48)):
        assert rows[name]["focal_source"] == "estimated"
        assert rows[name]["width"] == width
        assert rows[name]["focal_px"] == pytest.approx(0.5 * width / math.tan(math.radians(FOV_DEG / 2)), rel=1e-4)
    a = rows["a.png"]
    assert a["error"] is None and 0 < a["depth_min"] <= a["depth_median"] <= a["depth_max"]
    depth = np.load(output / "a.npy")
    assert a["depth_median"] == pytest.approx(float(np.median(depth)), rel=1e-5)


def test_corrupt_file_reported_and_skipped(workspace: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert _predict(workspace, tmp_path / "out", "--f-px", "100") == 0
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "warning: skipping" in err
    rows = _summary(tmp_path / "out")
    assert rows["bad.jpg"]["error"] and rows["bad.jpg"]["width"] is None
    assert all(rows[n]["focal_source"] == "given" and rows[n]["error"] is None for n in ("a.png", "b.jpg", "rot.JPG"))
    assert "Traceback" not in err


def _gradient(dtype: type, top: float) -> np.ndarray:
    """A 24 x 32 grayscale ramp from 0 to `top` in `dtype`."""
    return np.linspace(0, top, 24 * 32).reshape(24, 32).astype(dtype)


def test_16_bit_and_float_images_are_read_at_their_depth(tmp_path: Path) -> None:
    sixteen, unit = _gradient(np.uint16, 65535), _gradient(np.float32, 1.0)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    Image.fromarray(unit, mode="F").save(tmp_path / "f.tif")
    for name, expected in (("g16.png", sixteen.astype(np.float32) / 65535), ("f.tif", unit)):
        image, _ = load_image(tmp_path / name)
        assert image.shape == (24, 32, 3) and image.dtype == np.float32
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], expected, err_msg=name)


def test_a_float_image_outside_unit_range_is_refused_naming_its_range(workspace, tmp_path: Path, capsys) -> None:
    Image.fromarray(_gradient(np.float32, 300.0), mode="F").save(tmp_path / "hdr.tif")
    assert _predict(workspace, tmp_path / "out", inputs=tmp_path / "hdr.tif") == 1
    assert _summary(tmp_path / "out")["hdr.tif"]["error"] == (
        "ValueError: F pixels span 0..300, outside 0..1: convert the image to 8 or 16 bits")


def test_f_px_scales_depth(workspace: dict[str, Path], tmp_path: Path) -> None:
    single = workspace["images"] / "a.png"
    assert _predict(workspace, tmp_path / "f1", "--f-px", "80", inputs=single) == 0
    assert _predict(workspace, tmp_path / "f2", "--f-px", "160", inputs=single) == 0
    d1, d2 = np.load(tmp_path / "f1" / "a.npy"), np.load(tmp_path / "f2" / "a.npy")
    np.testing.assert_allclose(d2, 2.0 * d1, rtol=1e-5)
    assert _summary(tmp_path / "f2")["a.png"]["focal_px"] == pytest.approx(160.0)


def test_recursive_keeps_sub_paths(workspace: dict[str, Path], tmp_path: Path) -> None:
    sub = workspace["images"] / "sub"
    assert _predict(workspace, tmp_path / "out", "--f-px", "50", "--recursive", inputs=sub.parent) == 0
    assert np.load(tmp_path / "out" / "sub" / "deep.npy").shape == (64, 64)
    assert (tmp_path / "out" / "sub" / "deep.png").is_file()


def test_every_file_failing_exits_1(workspace: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert _predict(workspace, tmp_path / "out", inputs=workspace["images"] / "bad.jpg") == 1
    assert "bad.jpg" in capsys.readouterr().err


def test_no_fov_head_needs_focal(workspace: dict[str, Path], tmp_path: Path, capsys) -> None:
    ws = {**workspace, "weights": workspace["weights_no_fov"]}
    single = workspace["images"] / "a.png"
    assert _predict(ws, tmp_path / "nofocal", inputs=single) == 1
    assert "FOV head" in _summary(tmp_path / "nofocal")["a.png"]["error"]
    assert _predict(ws, tmp_path / "given", "--f-px", "90", inputs=single) == 0


def test_missing_weights_exit_2(workspace: dict[str, Path], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere" / "weights.pt"
    assert _predict({**workspace, "weights": missing}, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err


def test_missing_input_exit_2(workspace: dict[str, Path], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_dir"
    assert _predict(workspace, tmp_path / "out", inputs=missing) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err
    assert not (tmp_path / "out").exists()


def test_wrong_weights_exit_2(workspace: dict[str, Path], tmp_path: Path, capsys) -> None:
    argv = ["predict", "--weights", str(workspace["weights"]), "--input", str(workspace["images"])]
    assert main([*argv, "--output", str(tmp_path), "--preset", "small", "--device", "cpu"]) == 2  # other widths
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(workspace["weights"]) in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_exit_2(workspace: dict[str, Path], tmp_path: Path, capsys) -> None:
    argv = ["predict", "--weights", str(workspace["weights"]), "--input", str(workspace["images"])]
    assert main([*argv, "--output", str(tmp_path), "--device", "cuda"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_focal_35mm_conversion() -> None:
    assert focal_35mm_to_px(36.0, 3600, 2400) == pytest.approx(3600.0)  # full-frame sized sensor in pixels
    assert focal_35mm_to_px(24.0, 4000, 3000) == pytest.approx(24.0 * 5000 / math.hypot(36, 24))


def test_colormap() -> None:
    lut = colormap_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    depth = np.array([[1.0, 2.0], [4.0, np.inf]], dtype=np.float32)
    rgb = colorize_inverse_depth(depth)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == lut[-1]).all() and (rgb[1, 1] == lut[0]).all()  # nearest = top colour, invalid = bottom


def test_cli_help_lists_predict() -> None:
    result = subprocess.run([sys.executable, "-m", "dp_train", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "predict" in result.stdout
