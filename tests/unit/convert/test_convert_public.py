"""convert_public: public benchmark layouts -> shards, checked against independent writers.

Every format gets tiny files written here or in tests/helpers/convert_fixtures.py straight from
its public specification (struct / NumPy `tofile` for binary formats, OpenCV for PNG and JPEG,
h5py for HDF5), an asymmetric image so that a transposition or flip fails, and one bad input
that must be skipped or reported as a one-line error naming the file.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dp_train.convert import formats, hdf5_sets
from dp_train.convert.errors import ConvertError
from tests.helpers.paths import REPO
from tests.helpers.convert_fixtures import (
    COLS,
    H,
    ROWS,
    W,
    depth_map,
    pattern,
    write_matte_pair,
    write_middlebury,
    write_png,
    write_sintel_frame,
    write_text,
)
from tests.helpers.convert_results import check, read_jpeg, run, shards, skip_list

h5py = pytest.importorskip("h5py")

SCRIPT = REPO / "tools" / "convert" / "convert_public.py"


# ----------------------------------------------------------------------------- Middlebury


def test_middlebury(tmp_path):
    disparity = (10 + COLS + 2 * ROWS).astype(np.float32)
    disparity[0, 1] = np.inf
    for i, scene in enumerate(["Adirondack-perfect", "Bicycle1-perfect"]):
        write_middlebury(tmp_path / "mb" / scene, 100.0 + i, disparity, i)
    write_middlebury(tmp_path / "mb" / "Broken-perfect", 100.0, disparity, 5, calib_extra="")
    write_png(tmp_path / "mb" / "Partial" / "im0.png", pattern())
    assert run("middlebury", tmp_path / "mb", tmp_path / "out") == 0
    samples = shards(tmp_path / "out", "middlebury")
    assert sorted(samples) == ["Adirondack-perfect", "Bicycle1-perfect"]
    for i, key in enumerate(sorted(samples)):
        f = 100.0 + i
        expected = np.where(np.isfinite(disparity), 190.0 * f / (disparity + 5.5) / 1000, 0)
        check(samples[key], pattern(i), expected, f, (True, False, False))
    skipped = skip_list(tmp_path / "out", "middlebury")
    assert "calib.txt" in skipped["Broken-perfect"] and "doffs" in skipped["Broken-perfect"]
    assert skipped["Partial"].startswith("no ") and skipped["Partial"].endswith("disp0.pfm")
    assert run("middlebury", tmp_path / "mb", tmp_path / "out") == 2  # never overwrites shards


# ----------------------------------------------------------------------------- Sintel


def test_sintel(tmp_path):
    root = tmp_path / "training"
    for i, frame in enumerate(["frame_0001", "frame_0002", "frame_0003"]):
        write_sintel_frame(root, "alley_1", frame, i, 50.0 + i, depth_map(i + 1), **({} if i < 2 else {"tag": 1.0}))
    assert run("sintel", root, tmp_path / "out") == 0
    samples = shards(tmp_path / "out", "sintel")
    assert sorted(samples) == ["alley_1_frame_0001", "alley_1_frame_0002"]
    for i, key in enumerate(sorted(samples)):
        check(samples[key], pattern(i), depth_map(i + 1), 50.0 + i, (True, True, False))
    reason = skip_list(tmp_path / "out", "sintel")["alley_1_frame_0003"]
    assert "frame_0003.dpt" in reason and "not a Sintel .dpt file" in reason


# ----------------------------------------------------------------------------- KITTI

P_RECT = "P_rect_0{cam}: {f:e} 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 {f:e} 1.728540e+02 " \
         "2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03\n"


def write_kitti_drive(root: Path, drive: str, calib: str) -> np.ndarray:
    """Two annotated frames of image_02 (sparse 16-bit depth, value = metres * 256) and the calib."""
    counts = np.zeros((H, W), np.uint16)
    counts[::2, 1::3] = np.rint(depth_map(2.0)[::2, 1::3] * 256).astype(np.uint16)
    for i, frame in enumerate(["0000000005", "0000000006"]):
        write_png(root / "data_depth_annotated" / "val" / drive / "proj_depth" / "groundtruth" / "image_02" / f"{frame}.png", counts)
        write_png(root / drive[:10] / drive / "image_02" / "data" / f"{frame}.png", pattern(i))
    write_text(root / drive[:10] / "calib_cam_to_cam.txt", "calib_time: 09-Jan-2012 13:57:47\n" + calib)
    return counts


def test_kitti(tmp_path):
    good = "2011_09_26_drive_0002_sync"
    counts = write_kitti_drive(tmp_path, good, P_RECT.format(cam=2, f=721.5377) + P_RECT.format(cam=3, f=700.0))
    write_kitti_drive(tmp_path, "2011_09_28_drive_0001_sync", P_RECT.format(cam=3, f=700.0))
    assert run("kitti", tmp_path, tmp_path / "out") == 0
    samples = shards(tmp_path / "out", "kitti")
    keys = [f"{good}_image_02_0000000005", f"{good}_image_02_0000000006"]
    assert sorted(samples) == keys
    for i, key in enumerate(keys):
        check(samples[key], pattern(i), counts / 256.0, 721.5377, (True, False, True))
    skipped = skip_list(tmp_path / "out", "kitti")
    assert len(skipped) == 2
    assert all("calib_cam_to_cam.txt" in r and "no P_rect_02 line" in r for r in skipped.values())


# ----------------------------------------------------------------------------- NYUv2


def write_nyu_mat(path: Path, n: int, with_depths: bool = True) -> None:
    """MATLAB v7.3 layout as h5py sees it: images (N, 3, W, H) uint8, depths (N, W, H) float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["images"] = np.stack([pattern(i).transpose(2, 1, 0) for i in range(n)])
        if with_depths:
            f["depths"] = np.stack([depth_map(i + 1).T for i in range(n)]).astype(np.float32)


def test_nyu_split_and_orientation(tmp_path):
    write_nyu_mat(tmp_path / "nyu" / "nyu_depth_v2_labeled.mat", 3)
    write_text(tmp_path / "test.txt", "2\n3\n")
    assert run("nyu", tmp_path / "nyu", tmp_path / "out", "--split", "test", "--split-file", str(tmp_path / "test.txt")) == 0
    samples = shards(tmp_path / "out", "nyu")
    assert sorted(samples) == ["nyu_0002", "nyu_0003"]
    for i, key in [(1, "nyu_0002"), (2, "nyu_0003")]:
        check(samples[key], pattern(i), depth_map(i + 1), 518.8579, (True, False, False))
    assert run("nyu", tmp_path / "nyu", tmp_path / "train", "--split", "train", "--split-file", str(tmp_path / "test.txt")) == 0
    assert sorted(shards(tmp_path / "train", "nyu")) == ["nyu_0001"]


def test_nyu_malformed_mat_is_one_line_error(tmp_path, capsys):
    write_nyu_mat(tmp_path / "nyu_depth_v2_labeled.mat", 2, with_depths=False)
    assert run("nyu", tmp_path, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "nyu_depth_v2_labeled.mat" in err and "no 'depths' dataset" in err


def test_missing_h5py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ConvertError, match=r"pip install 'dp-train\[convert\]'"):
        formats.import_h5py()


# ----------------------------------------------------------------------------- ETH3D


def write_eth3d(scene: Path) -> dict[str, np.ndarray]:
    """Undistorted PINHOLE images, distorted calibration (DSC_0001 pinhole, DSC_0002 zero-coefficient
    thin-prism fisheye) and raw float32 depth maps of the distorted images; DSC_0003's is too short."""
    names = ["DSC_0001.JPG", "DSC_0002.JPG", "DSC_0003.JPG"]
    images_txt = "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n" + "".join(
        f"{i} 1 0 0 0 0 0 0 {{cam{i}}} {{folder}}/{n}\n{'' if i == 1 else '2.5 3.5 -1'}\n" for i, n in enumerate(names, 1))
    write_text(scene / "dslr_calibration_undistorted" / "cameras.txt", f"# header\n1 PINHOLE {W} {H} 5 5 4 3\n")
    write_text(scene / "dslr_calibration_undistorted" / "images.txt",
               images_txt.format(cam1=1, cam2=1, cam3=1, folder="dslr_images_undistorted"))
    write_text(scene / "dslr_calibration_jpg" / "cameras.txt",
               f"1 PINHOLE {W} {H} 5 5 4 3\n2 THIN_PRISM_FISHEYE {W} {H} 5 5 4 3 0 0 0 0 0 0 0 0\n")
    write_text(scene / "dslr_calibration_jpg" / "images.txt", images_txt.format(cam1=1, cam2=2, cam3=1, folder="dslr_images"))
    raw = {}
    for i, name in enumerate(names):
        write_png(scene / "images" / "dslr_images_undistorted" / name, pattern(i))
        raw[name] = depth_map(i + 1).astype(np.float32)
        raw[name][1, 2] = np.inf
        (scene / "ground_truth_depth" / "dslr_images").mkdir(parents=True, exist_ok=True)
        (raw[name][:-1] if i == 2 else raw[name]).astype("<f4").tofile(scene / "ground_truth_depth" / "dslr_images" / name)
    return raw


def fisheye_expected(raw: np.ndarray) -> np.ndarray:
    """raw seen by a pinhole camera f=5, c=(4, 3) when it belongs to an equidistant fisheye with the same
    f and c: pixel centre (j + .5, i + .5) -> ray -> radius scaled by atan(r) / r -> source pixel."""
    x, y = (COLS + 0.5 - 4) / 5, (ROWS + 0.5 - 3) / 5
    r = np.hypot(x, y)
    s = np.where(r > 0, np.arctan(r) / np.maximum(r, 1e-12), 1.0)
    return raw[np.floor(5 * y * s + 3).astype(int), np.floor(5 * x * s + 4).astype(int)]


def test_eth3d_resamples_distorted_depth_in_two_workers(tmp_path):
    raw = write_eth3d(tmp_path / "eth3d" / "courtyard")
    assert run("eth3d", tmp_path / "eth3d", tmp_path / "out", "--workers", "2") == 0
    samples = shards(tmp_path / "out", "eth3d")
    assert sorted(samples) == ["courtyard_DSC_0001", "courtyard_DSC_0002"]
    for name, expected in [("DSC_0001", raw["DSC_0001.JPG"]), ("DSC_0002", fisheye_expected(raw["DSC_0002.JPG"]))]:
        jpeg = tmp_path / "eth3d" / "courtyard" / "images" / "dslr_images_undistorted" / f"{name}.JPG"
        check(samples[f"courtyard_{name}"], read_jpeg(jpeg), expected, 5.0, (True, False, False), image_atol=3)
    assert "floats, expected 8x6" in skip_list(tmp_path / "out", "eth3d")["courtyard_DSC_0003"]


# ----------------------------------------------------------------------------- iBims-1


def test_ibims(tmp_path):
    names = ["corridor_01", "office_01"]
    write_text(tmp_path / "imagelist.txt", "\n".join(names) + "\n")
    counts = np.rint(depth_map() / 50 * 65535).astype(np.uint16)
    counts[2, 3] = 0
    mask = np.full((H, W), 255, np.uint8)
    mask[0, 0] = 0
    for i, name in enumerate(names):
        write_png(tmp_path / "rgb" / f"{name}.png", pattern(i))
        write_png(tmp_path / "depth" / f"{name}.png", counts)
        write_png(tmp_path / "mask_invalid" / f"{name}.png", mask)
        write_png(tmp_path / "mask_transp" / f"{name}.png", np.full((H, W), 255, np.uint8))
        write_text(tmp_path / "calib" / f"{name}.txt", "520.5,521.0,4.0,3.0" if i == 0 else "520.5 521.0 4.0")
    assert run("ibims", tmp_path, tmp_path / "out") == 0
    samples = shards(tmp_path / "out", "ibims")
    assert sorted(samples) == ["corridor_01"]
    expected = counts * 50.0 / 65535
    check(samples["corridor_01"], pattern(0), np.where(mask > 0, expected, 0), 520.5, (True, False, False))
    assert samples["corridor_01"].depth[0, 0] == pytest.approx(expected[0, 0], rel=1e-3)  # masked, not erased
    assert "expected 4 numbers" in skip_list(tmp_path / "out", "ibims")["office_01"]


# ----------------------------------------------------------------------------- DIS5K


def test_dis5k_alpha_without_depth(tmp_path):
    split = tmp_path / "DIS5K" / "DIS-TE1"
    alpha = (COLS * 30 + ROWS).astype(np.uint8)
    for i, stem in enumerate(["1#Accessories#1", "2#Animal#3"]):
        write_matte_pair(split, stem, i, alpha)
    write_png(split / "im" / "orphan.png", pattern())
    assert run("dis5k", tmp_path / "DIS5K", tmp_path / "out", "--split", "DIS-TE1") == 0
    samples = shards(tmp_path / "out", "dis5k")
    assert sorted(samples) == ["1_Accessories_1", "2_Animal_3"]
    for i, key in enumerate(sorted(samples)):
        s = samples[key]
        np.testing.assert_array_equal(s.image, pattern(i))
        np.testing.assert_array_equal(np.rint(s.alpha * 255), alpha)
        assert not s.valid.any() and not s.depth.any()
        assert s.meta.f_px is None and not s.meta.metric
    assert skip_list(tmp_path / "out", "dis5k") == {"orphan": "no alpha file"}
    report = json.loads((tmp_path / "out" / "dis5k.report.json").read_text())
    assert report["samples_written"] == 2 and report["depth"] is None and report["metric"] is False


# ----------------------------------------------------------------------------- Hypersim


def write_hypersim_frame(images: Path, frame: str, distance: np.ndarray, color: np.ndarray | None) -> None:
    """depth_meters HDF5 plus either a linear color.hdf5 or (color None) a tonemap.jpg."""
    (images / "scene_cam_00_geometry_hdf5").mkdir(parents=True, exist_ok=True)
    with h5py.File(images / "scene_cam_00_geometry_hdf5" / f"frame.{frame}.depth_meters.hdf5", "w") as f:
        f["dataset"] = distance
    if color is None:
        write_png(images / "scene_cam_00_final_preview" / f"frame.{frame}.tonemap.jpg", pattern())
    else:
        (images / "scene_cam_00_final_hdf5").mkdir(parents=True, exist_ok=True)
        with h5py.File(images / "scene_cam_00_final_hdf5" / f"frame.{frame}.color.hdf5", "w") as f:
            f["dataset"] = color.astype(np.float16)


def test_hypersim_planar_depth_tonemap_and_camera_csv(tmp_path):
    f_px = 4.0  # 90 degree horizontal FOV at width 8: M_cam_from_uv = diag(1, 6/8, -1)
    ray_length = np.sqrt((COLS + 0.5 - W / 2) ** 2 + (ROWS + 0.5 - H / 2) ** 2 + f_px**2) / f_px
    distance = (depth_map() * ray_length).astype(np.float16)  # Hypersim stores float16
    distance[5, 7] = np.nan
    z = distance / ray_length
    color = np.full((H, W, 3), 0.25)
    color[:3, :4] = 1.0  # top-left quadrant: the 90th brightness percentile
    for scene in ("ai_001_001", "ai_002_001"):
        write_hypersim_frame(tmp_path / scene / "images", "0000", distance, color)
        write_hypersim_frame(tmp_path / scene / "images", "0001", distance, None)
    columns = ["scene_name", "settings_output_img_width", "settings_output_img_height"] + [
        f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    write_text(tmp_path / "cameras.csv", ",".join(columns) + f"\nai_001_001,{W},{H},1,0,0,0,0.75,0,0,0,-1\n")
    assert run("hypersim", tmp_path, tmp_path / "out", "--camera-csv", str(tmp_path / "cameras.csv")) == 0
    samples = shards(tmp_path / "out", "hypersim")
    assert sorted(samples) == ["ai_001_001_cam_00_0000", "ai_001_001_cam_00_0001"]
    expected_image = np.full((H, W, 3), round(255 * 0.8 * 0.25 ** (1 / 2.2)), np.uint8)
    expected_image[:3, :4] = round(255 * 0.8)
    check(samples["ai_001_001_cam_00_0000"], expected_image, z, f_px, (True, True, False))
    jpeg = tmp_path / "ai_001_001" / "images" / "scene_cam_00_final_preview" / "frame.0001.tonemap.jpg"
    check(samples["ai_001_001_cam_00_0001"], read_jpeg(jpeg), z, f_px, (True, True, False), image_atol=3)
    assert set(skip_list(tmp_path / "out", "hypersim").values()) == {
        f"scene ai_002_001 is not in {tmp_path / 'cameras.csv'}"}


def test_hypersim_default_camera():
    assert hdf5_sets.HYPERSIM_DEFAULT_CAMERA.f_px == pytest.approx(512 / math.tan(math.radians(30)))
    assert hdf5_sets.HYPERSIM_DEFAULT_CAMERA.f_px == pytest.approx(886.81, abs=0.01)


def test_cli_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "sintel", "--root", str(tmp_path / "x"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --root {tmp_path / 'x'}: no such folder"
