"""convert_public for the paper's remaining benchmarks (Booster, nuScenes, SUN RGB-D, Spring, focal-length
photo folders, DIS-5k exclusions): tiny files written here in each dataset's on-disk format (OpenCV
FileStorage XML, NumPy .npy, HDF5, 16-bit PNG, nuScenes JSON tables and float32 point files, EXIF JPEG),
one bad input each that must be skipped naming the reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.convert_fixtures import COLS, H, ROWS, W, pattern, write_photo, write_png, write_text
from tests.helpers.convert_results import check, read_jpeg, run, shards, skip_list

h5py = pytest.importorskip("h5py")


# ----------------------------------------------------------------------------- Booster


def write_booster_calib(path: Path, f: float, baseline_mm: float | None) -> None:
    """calib_00-02.xml through OpenCV's FileStorage, as the dataset ships it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    storage.write("proj_matL", np.array([[f, 0, 4, 0], [0, f, 3, 0], [0, 0, 1, 0]], dtype=np.float64))
    storage.write("proj_matR", np.array([[f, 0, 4, -f * 0.1], [0, f, 3, 0], [0, 0, 1, 0]], dtype=np.float64))
    if baseline_mm is not None:
        storage.write("baselineLR", baseline_mm)
    storage.release()


def test_booster(tmp_path):
    root = tmp_path / "train" / "balanced"
    disparity = (20 + COLS + 3 * ROWS).astype(np.float32)
    disparity[0, 0] = 0.0  # unknown
    mask = np.full((H, W), 255, np.uint8)
    mask[5, 7] = 0
    for illumination in range(2):
        write_png(root / "Bathroom" / "camera_00" / f"im{illumination}.png", pattern(illumination))
    np.save(root / "Bathroom" / "disp_00.npy", disparity)
    write_png(root / "Bathroom" / "mask_00.png", mask)
    write_booster_calib(root / "Bathroom" / "calib_00-02.xml", 1000.0, 75.0)
    write_png(root / "Broken" / "camera_00" / "im0.png", pattern())
    np.save(root / "Broken" / "disp_00.npy", disparity)
    write_booster_calib(root / "Broken" / "calib_00-02.xml", 1000.0, None)

    assert run("booster", root, tmp_path / "out") == 0
    samples = shards(tmp_path / "out", "booster")
    assert sorted(samples) == ["Bathroom_im0", "Bathroom_im1"]
    expected = np.where((disparity > 0) & (mask > 0), 0.075 * 1000.0 / np.maximum(disparity, 1e-9), np.nan)
    for i, key in enumerate(sorted(samples)):
        check(samples[key], pattern(i), expected, 1000.0, (True, False, False))
    assert "baselineLR" in skip_list(tmp_path / "out", "booster")["Broken_im0"]


# ----------------------------------------------------------------------------- SUN RGB-D


def sunrgbd_png(depth_mm: np.ndarray) -> np.ndarray:
    """The dataset's encoding of millimetres: the 16-bit value rotated left by 3 bits."""
    mm = depth_mm.astype(np.uint16)
    return ((mm << 3) | (mm >> 13)).astype(np.uint16)


def test_sunrgbd_with_a_split_file(tmp_path):
    root = tmp_path / "SUNRGBD"
    depth_mm = (500 + 100 * COLS + 700 * ROWS).astype(np.uint16)
    depth_mm[2, 3] = 0
    for i, scene in enumerate(["kv1/NYUdata/NYU0001", "kv2/kinect2data/000002_2014-05-26_14-23-37"]):
        folder = root / scene
        write_png(folder / "image" / f"{i:06d}.jpg", pattern(i))
        write_png(folder / "depth" / f"{i:06d}.png", sunrgbd_png(depth_mm))
        write_text(folder / "intrinsics.txt", f"{500 + i} 0 4\n0 {500 + i} 3\n0 0 1\n")
    write_text(root / "xtion" / "broken" / "intrinsics.txt", "500 0 4\n0 500 3\n0 0 1\n")
    split = tmp_path / "test_scenes.txt"
    write_text(split, "/n/fs/sun3d/data/SUNRGBD/kv2/kinect2data/000002_2014-05-26_14-23-37\nSUNRGBD/xtion/broken\n")

    assert run("sunrgbd", root, tmp_path / "out", "--split-file", str(split)) == 0
    samples = shards(tmp_path / "out", "sunrgbd")
    key = "kv2_kinect2data_000002_2014-05-26_14-23-37"
    assert list(samples) == [key]
    expected = np.where(depth_mm > 0, depth_mm / 1000.0, np.nan)
    image = read_jpeg(root / "kv2/kinect2data/000002_2014-05-26_14-23-37" / "image" / "000001.jpg")
    check(samples[key], image, expected, 501.0, (True, False, False))
    assert "0 image(s)" in skip_list(tmp_path / "out", "sunrgbd")["xtion_broken"]


# ----------------------------------------------------------------------------- Spring


def test_spring_reads_2x_disparity_at_image_resolution(tmp_path):
    scene = tmp_path / "train" / "0001"
    big_rows, big_cols = np.mgrid[0 : 2 * H, 0 : 2 * W]
    disparity = (10 + big_cols + 2 * big_rows).astype(np.float32)
    disparity[0, 0] = 0.0  # sky
    for frame in (1, 2):
        write_png(scene / "frame_left" / f"frame_left_{frame:04d}.png", pattern(frame))
    (scene / "disp1_left").mkdir(parents=True)
    with h5py.File(scene / "disp1_left" / "disp1_left_0001.dsp5", "w") as f:
        f.create_dataset("disparity", data=disparity)
    write_text(scene / "cam_data" / "intrinsics.txt", "1200.0 1200.0 960.0 540.0\n1300.0 1300.0 960.0 540.0\n")

    assert run("spring", tmp_path / "train", tmp_path / "out") == 0
    samples = shards(tmp_path / "out", "spring")
    assert list(samples) == ["0001_0001"]
    sub = disparity[::2, ::2]
    check(samples["0001_0001"], pattern(1), np.where(sub > 0, 1200.0 * 0.065 / np.maximum(sub, 1e-9), np.nan),
          1200.0, (True, True, False))
    assert skip_list(tmp_path / "out", "spring")["0001_0002"].endswith("disp1_left_0002.dsp5")


# ----------------------------------------------------------------------------- nuScenes


def rotation(rvec: tuple[float, float, float]) -> tuple[np.ndarray, list[float]]:
    """A rotation from an axis-angle vector: its matrix (OpenCV's Rodrigues) and its w, x, y, z quaternion."""
    vector = np.asarray(rvec, dtype=np.float64)
    angle = float(np.linalg.norm(vector))
    quaternion = [math.cos(angle / 2), *(math.sin(angle / 2) * vector / angle)]
    return cv2.Rodrigues(vector)[0], quaternion


K = np.array([[10.0, 0.0, 4.0], [0.0, 10.0, 3.0], [0.0, 0.0, 1.0]])
POSES = {  # name -> (axis-angle, translation)
    "cs_cam": ((1.2, -1.1, 1.3), (1.7, 0.0, 1.5)), "cs_lidar": ((0.0, 0.0, -0.03), (0.9, 0.0, 1.8)),
    "ep_cam": ((0.0, 0.0, 0.8), (600.0, 1600.0, 0.0)), "ep_lidar": ((0.01, 0.0, 0.79), (600.5, 1600.2, 0.1)),
}


def camera_to_lidar(points: np.ndarray) -> np.ndarray:
    """Camera-frame points in the LiDAR frame, by the chain the devkit inverts (independent matrices)."""
    r = {name: rotation(rvec)[0] for name, (rvec, _) in POSES.items()}
    t = {name: np.asarray(tvec) for name, (_, tvec) in POSES.items()}
    world = (points @ r["cs_cam"].T + t["cs_cam"]) @ r["ep_cam"].T + t["ep_cam"]
    ego = (world - t["ep_lidar"]) @ r["ep_lidar"]
    return (ego - t["cs_lidar"]) @ r["cs_lidar"]


def write_nuscenes(root: Path, expected: np.ndarray) -> None:
    """Tables for two key-frame samples (the second without its LiDAR file) and one non-key sweep; the first
    sample's sweep has a point per valid pixel of `expected`, a farther one in the same pixel, one behind the
    camera and one outside the image."""
    rows, cols = np.nonzero(np.isfinite(expected))
    z = expected[rows, cols]
    on_image = np.stack([(cols + 0.5) * z, (rows + 0.5) * z, z], 1) @ np.linalg.inv(K).T
    extra = np.array([on_image[0] * 1.5, [0.1, 0.1, -3.0], [50.0, 0.0, 5.0]])
    points = camera_to_lidar(np.concatenate([on_image, extra]))
    cloud = np.concatenate([points, np.ones((len(points), 2))], 1).astype("<f4")
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True)
    cloud.tofile(root / "samples" / "LIDAR_TOP" / "s1.pcd.bin")
    write_png(root / "samples" / "CAM_FRONT" / "s1__CAM_FRONT.jpg", pattern(1))
    write_png(root / "samples" / "CAM_FRONT" / "s2__CAM_FRONT.jpg", pattern(2))
    pose = {name: {"token": name, "rotation": rotation(rvec)[1], "translation": list(tvec)}
            for name, (rvec, tvec) in POSES.items()}
    calibrated = [pose["cs_cam"] | {"sensor_token": "cam", "camera_intrinsic": K.tolist()},
                  pose["cs_lidar"] | {"sensor_token": "lidar", "camera_intrinsic": []}]
    data = [{"token": f"{s}_{sensor}_{file}", "sample_token": s, "ego_pose_token": f"ep_{sensor}",
             "calibrated_sensor_token": f"cs_{sensor}", "is_key_frame": key,
             "filename": f"samples/{'CAM_FRONT' if sensor == 'cam' else 'LIDAR_TOP'}/{file}"}
            for s, sensor, file, key in [("s1", "cam", "s1__CAM_FRONT.jpg", True), ("s1", "lidar", "s1.pcd.bin", True),
                                         ("s2", "cam", "s2__CAM_FRONT.jpg", True), ("s2", "lidar", "s2.pcd.bin", True),
                                         ("s2", "cam", "sweep__CAM_FRONT.jpg", False)]]
    tables = {"sample_data": data, "calibrated_sensor": calibrated, "ego_pose": [pose["ep_cam"], pose["ep_lidar"]],
              "sensor": [{"token": "cam", "channel": "CAM_FRONT"}, {"token": "lidar", "channel": "LIDAR_TOP"}]}
    for name, records in tables.items():
        write_text(root / "v1.0-mini" / f"{name}.json", json.dumps(records))


def test_nuscenes_projects_lidar_into_the_camera(tmp_path):
    expected = np.full((H, W), np.nan)
    expected[ROWS % 2 == COLS % 3] = (3.0 + 0.5 * COLS + 0.25 * ROWS)[ROWS % 2 == COLS % 3]
    write_nuscenes(tmp_path / "nuscenes", expected)
    assert run("nuscenes", tmp_path / "nuscenes", tmp_path / "out", "--version", "v1.0-mini") == 0
    samples = shards(tmp_path / "out", "nuscenes")
    assert list(samples) == ["s1__CAM_FRONT"]
    image = read_jpeg(tmp_path / "nuscenes" / "samples" / "CAM_FRONT" / "s1__CAM_FRONT.jpg")
    check(samples["s1__CAM_FRONT"], image, expected, 10.0, (True, False, True))
    assert skip_list(tmp_path / "out", "nuscenes")["s2__CAM_FRONT"].endswith("s2.pcd.bin")


@pytest.mark.parametrize(("table", "content"), [("sensor", None), ("ego_pose", "{not json")])
def test_a_missing_or_malformed_nuscenes_table_is_one_error_line(tmp_path, capsys, table, content):
    write_nuscenes(tmp_path / "nuscenes", np.ones((H, W)))
    path = tmp_path / "nuscenes" / "v1.0-mini" / f"{table}.json"
    path.unlink() if content is None else path.write_text(content)
    assert run("nuscenes", tmp_path / "nuscenes", tmp_path / "out", "--version", "v1.0-mini") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and f"{table}.json" in err


# ----------------------------------------------------------------------------- focal-length photo folders


def test_focal_photo_folder_takes_the_exif_focal_length(tmp_path):
    write_photo(tmp_path / "zoom" / "camera_a" / "IMG_0001.jpg", 1, 28)
    write_photo(tmp_path / "zoom" / "camera_b" / "IMG_0001.jpg", 2, 135)
    write_photo(tmp_path / "zoom" / "no_exif.jpg", 3, None)
    assert run("focal", tmp_path / "zoom", tmp_path / "out", "--dataset", "zoom") == 0
    samples = shards(tmp_path / "out", "zoom")
    assert sorted(samples) == ["camera_a_IMG_0001", "camera_b_IMG_0001"]
    for key, focal_35mm in (("camera_a_IMG_0001", 28), ("camera_b_IMG_0001", 135)):
        sample = samples[key]
        assert sample.meta.f_px == pytest.approx(focal_35mm * math.hypot(W, H) / math.hypot(36, 24))
        assert not sample.meta.metric and not sample.valid.any()
    assert "no usable EXIF focal length" in skip_list(tmp_path / "out", "zoom")["no_exif"]


# ----------------------------------------------------------------------------- DIS-5k exclusions


def test_dis5k_exclusion_list_leaves_samples_out_and_lists_them(tmp_path):
    split = tmp_path / "DIS5K" / "DIS-TE1"
    for i, stem in enumerate(["1#Accessories#1", "2#Animal#3", "3#Car#2"]):
        write_png(split / "im" / f"{stem}.jpg", pattern(i))
        write_png(split / "gt" / f"{stem}.png", np.full((H, W), 255, np.uint8))
    exclusions = tmp_path / "occluded.txt"
    write_text(exclusions, "# occluded by a foreground object\n2#Animal#3\n  3#Car#2  \n")
    assert run("dis5k", tmp_path / "DIS5K", tmp_path / "out", "--split", "DIS-TE1", "--exclude", str(exclusions)) == 0
    assert list(shards(tmp_path / "out", "dis5k")) == ["1_Accessories_1"]
    skipped = skip_list(tmp_path / "out", "dis5k")
    assert skipped == {"2_Animal_3": f"excluded by {exclusions}", "3_Car_2": f"excluded by {exclusions}"}
