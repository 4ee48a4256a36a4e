"""nuScenes -> metric depth samples: the LIDAR_TOP sweep of each key frame projected into one camera image
(sparse ground truth, as the paper's nuScenes benchmark, Tab. 1 and 18).

Spec: Caesar et al., "nuScenes" (CVPR 2020) and the nuscenes-devkit (schema in its docs/schema_nuscenes.md,
projection in `NuScenesExplorer.map_pointcloud_to_image`). The metadata tables are JSON lists in
<root>/<version>/: sample_data (token, sample_token, ego_pose_token, calibrated_sensor_token, filename,
is_key_frame), calibrated_sensor (token, sensor_token, translation, rotation as a w-x-y-z quaternion,
camera_intrinsic), sensor (token, channel) and ego_pose (token, translation, rotation). A LiDAR file
(samples/LIDAR_TOP/*.pcd.bin) is float32 (x, y, z, intensity, ring) per point in the sensor frame.
A point goes sensor -> ego (at the LiDAR time) -> global -> ego (at the camera time) -> camera; its depth
is the camera z; points nearer than `MIN_DEPTH_M` (the devkit's default 1 m) or outside the image are
dropped, and where several points fall in one pixel the nearest is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dp_train.convert.errors import ConvertError
from dp_train.convert.formats import FormatInfo, Item, Loaded, Skipped, first_missing, require_dir
from dp_train.convert.readers import read_image, read_or_skip
from dp_train.shards import sanitize_key

NUSCENES_FORMAT = FormatInfo(metric=True, synthetic=False, sparse=True)
MIN_DEPTH_M = 1.0
POINT_FIELDS = 5


@dataclass(frozen=True)
class Pose:
    """A rigid transform x -> R x + t (the nuScenes `rotation` quaternion w, x, y, z and `translation`)."""

    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Pose:
        """The pose of a calibrated_sensor or ego_pose record."""
        w, x, y, z = (float(v) for v in record["rotation"])
        norm = np.sqrt(w * w + x * x + y * y + z * z)
        w, x, y, z = w / norm, x / norm, y / norm, z / norm
        rotation = np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ])
        return cls(rotation, np.asarray(record["translation"], dtype=np.float64))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N,3) points mapped by the transform."""
        return points @ self.rotation.T + self.translation

    def invert(self, points: np.ndarray) -> np.ndarray:
        """(N,3) points mapped by the inverse transform."""
        return (points - self.translation) @ self.rotation


@dataclass(frozen=True)
class Projection:
    """Everything that places one LiDAR sweep in one camera image."""

    lidar_sensor: Pose
    lidar_ego: Pose
    camera_ego: Pose
    camera_sensor: Pose
    intrinsics: np.ndarray


def read_lidar_points(path: Path) -> np.ndarray:
    """(N,3) x, y, z of a nuScenes .pcd.bin (float32 x, y, z, intensity, ring per point)."""
    raw = np.fromfile(path, dtype="<f4")
    if raw.size % POINT_FIELDS:
        raise ValueError(f"{raw.size} floats is not a whole number of {POINT_FIELDS}-float points")
    return raw.reshape(-1, POINT_FIELDS)[:, :3].astype(np.float64)


def lidar_depth_map(points: np.ndarray, projection: Projection, height: int, width: int) -> np.ndarray:
    """HxW depth (metres, NaN where no point) of LiDAR points (sensor frame) seen by the camera."""
    world = projection.lidar_ego.apply(projection.lidar_sensor.apply(points))
    camera = projection.camera_sensor.invert(projection.camera_ego.invert(world))
    camera = camera[camera[:, 2] >= MIN_DEPTH_M]
    pixels = camera @ projection.intrinsics.T
    cols = np.floor(pixels[:, 0] / pixels[:, 2]).astype(np.int64)
    rows = np.floor(pixels[:, 1] / pixels[:, 2]).astype(np.int64)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    depth = np.full(height * width, np.inf)
    np.minimum.at(depth, rows[inside] * width + cols[inside], camera[inside, 2])
    return np.where(np.isfinite(depth), depth, np.nan).reshape(height, width)


def load_nuscenes(image: Path, lidar: Path, projection: Projection) -> Loaded:
    """One camera key frame with its projected LiDAR depth; f_px = camera_intrinsic[0][0]."""
    rgb = read_or_skip(image, read_image)
    points = read_or_skip(lidar, read_lidar_points)
    depth = lidar_depth_map(points, projection, *rgb.shape[:2])
    return Loaded(rgb, depth, float(projection.intrinsics[0, 0]))


def _table(folder: Path, name: str) -> dict[str, dict[str, Any]]:
    """A metadata table by token; ConvertError naming the file when it is missing or malformed."""
    path = folder / f"{name}.json"
    try:
        return {record["token"]: record for record in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConvertError(f"{path}: not a nuScenes {name} table ({reason})") from None


def find_nuscenes(root: Path, version: str = "v1.0-trainval", channel: str = "CAM_FRONT") -> tuple[list[Item], Skipped]:
    """Key-frame images of camera `channel` under root (the nuScenes folder: samples/, <version>/), each with
    the same sample's LIDAR_TOP key frame projected into it. Key: the image file's stem."""
    tables = require_dir(root / version, "nuScenes metadata folder")
    sample_data, calibrated, poses = (_table(tables, n) for n in ("sample_data", "calibrated_sensor", "ego_pose"))
    channels = {token: record["channel"] for token, record in _table(tables, "sensor").items()}
    by_sample: dict[str, dict[str, dict[str, Any]]] = {}
    for record in sample_data.values():
        sensor = channels.get(calibrated[record["calibrated_sensor_token"]]["sensor_token"])
        if record.get("is_key_frame") and sensor in (channel, "LIDAR_TOP"):
            by_sample.setdefault(record["sample_token"], {})[sensor] = record
    items: list[Item] = []
    skipped: Skipped = []
    for frames in sorted(by_sample.values(), key=lambda f: next(iter(f.values()))["filename"]):
        if channel not in frames:
            continue
        camera, lidar = frames[channel], frames.get("LIDAR_TOP")
        key = sanitize_key(Path(camera["filename"]).name.split(".")[0])
        reason = ("no LIDAR_TOP key frame in its sample" if lidar is None
                  else first_missing([root / camera["filename"], root / lidar["filename"]]))
        if reason:
            skipped.append((key, reason))
            continue
        camera_calib = calibrated[camera["calibrated_sensor_token"]]
        projection = Projection(
            Pose.from_record(calibrated[lidar["calibrated_sensor_token"]]),
            Pose.from_record(poses[lidar["ego_pose_token"]]), Pose.from_record(poses[camera["ego_pose_token"]]),
            Pose.from_record(camera_calib), np.asarray(camera_calib["camera_intrinsic"], dtype=np.float64))
        items.append(Item(key, partial(load_nuscenes, root / camera["filename"], root / lidar["filename"],
                                       projection)))
    return items, skipped
