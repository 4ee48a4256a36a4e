"""Procedural scenes (dp_train.synth): exact depth, known focal length, determinism, shards."""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dp_train import synth
from dp_train.shards import decode_sample, read_index
from dp_train.synth import FAR_M, Camera, Material, Plane, Scene, ground_scene, make_scene, render, render_scene

SIZE = (96, 128)


def test_same_seed_is_bit_identical_and_seeds_differ():
    a, b, c = render_scene(7, SIZE), render_scene(7, SIZE), render_scene(8, SIZE)
    for name in ("image", "depth", "valid", "alpha"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.meta == b.meta and a.key == b.key
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.depth, c.depth)
    assert a.key != c.key


def test_sample_fields_follow_the_schema():
    s = render_scene(3, SIZE)
    s.validate()
    assert s.image.shape == (*SIZE, 3) and s.image.dtype == np.uint8
    assert s.depth.shape == SIZE and s.depth.dtype == np.float32
    assert np.array_equal(s.valid, s.depth > 0)
    assert s.meta.dataset == "synth" and s.meta.metric and s.meta.synthetic and not s.meta.sparse
    assert s.meta.depth_kind == "depth"


@pytest.mark.parametrize("size", [(120, 160), (160, 120)])
def test_ground_plane_depth_is_analytic(size):
    """Level camera at height h: a pixel in row v sees the ground at z-depth f*h/(v - cy), in every column."""
    f, h = 110.0, 1.7
    cam = Camera(size, f, h)
    depth = render(ground_scene(cam)).depth.astype(np.float64)
    cy = cam.principal_point[1]
    rows = np.arange(size[0], dtype=np.float64)
    with np.errstate(divide="ignore"):
        expected = np.where(rows > cy, f * h / (rows - cy), 0.0)
    expected = np.where(expected <= FAR_M, expected, 0.0)
    np.testing.assert_allclose(depth, np.broadcast_to(expected[:, None], size), rtol=1e-6, atol=0)
    assert (depth[rows < cy] == 0).all(), "above the horizon is sky: invalid"


def test_depth_is_z_depth_not_ray_length():
    """A wall facing the camera at Z = 10 m has depth exactly 10 everywhere, though corner rays are longer."""
    cam = Camera((64, 96), 40.0, 1.5)  # wide: corner rays ~1.5x the axis length
    scene = Scene(camera=cam, sky=False)
    scene.add(Plane((0.0, 0.0, 1.0), 10.0), Material((0.5, 0.5, 0.5), (0.4, 0.4, 0.4)), -1, False)
    depth = render(scene).depth
    np.testing.assert_allclose(depth, 10.0, rtol=1e-6)


def test_tilted_camera_ground_depth_matches_geometry():
    """With pitch and roll, z-depth of each ground hit equals the hit point's coordinate along the optical axis."""
    cam = Camera((48, 64), 50.0, 2.0, pitch=math.radians(-8), roll=math.radians(4))
    depth = render(ground_scene(cam)).depth.astype(np.float64)
    d = np.stack(cam.rays(), -1)  # world directions with camera-z component 1
    t = -cam.height / d[..., 1]  # ray parameter where Y = 0
    point = np.array(cam.position) + t[..., None] * d
    z_cam = ((point - np.array(cam.position)) @ cam.rotation())[..., 2]
    valid = depth > 0
    assert valid.mean() > 0.3
    np.testing.assert_allclose(depth[valid], z_cam[valid], rtol=1e-5)


def test_fov_range_and_focal_length():
    fovs = []
    for seed in range(40):
        cam = make_scene(seed, (60, 90)).camera
        fovs.append(cam.fov_deg)
        assert 30.0 <= cam.fov_deg <= 100.0
        assert cam.f_px == pytest.approx(0.5 * 90 / math.tan(math.radians(cam.fov_deg) / 2))
    assert max(fovs) - min(fovs) > 40, "FOV should spread over the range"
    s = render_scene(5, (60, 90))
    assert s.meta.f_px == pytest.approx(make_scene(5, (60, 90)).camera.f_px)


def test_sky_pixels_are_invalid_and_closed_scenes_fully_valid():
    for seed in range(4):
        open_air = render_scene(seed, SIZE, sky=True)
        assert (open_air.depth == 0).any() and not open_air.valid.all()
        assert (open_air.depth[open_air.valid] > 0).all()
        assert open_air.depth.max() <= FAR_M
        closed = render_scene(seed, SIZE, sky=False)
        assert closed.valid.all() and (closed.depth > 0).all()
    both = {bool((render_scene(seed, (32, 32)).depth == 0).any()) for seed in range(20)}
    assert both == {True, False}, "sky=None should give both open and closed scenes"


def _boundary_fraction(depth: np.ndarray, ids: np.ndarray, jump: float = 0.05) -> float:
    """Fraction of pixels next to a different object more than `jump` (relative) nearer or farther."""
    near = np.zeros(depth.shape, dtype=bool)
    for a, b in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[1:], np.s_[:-1])):
        da, db = depth[a], depth[b]
        edge = (da > 0) & (db > 0) & (ids[a] != ids[b]) & (np.abs(da - db) > jump * np.minimum(da, db))
        near[a] |= edge
        near[b] |= edge
    return float(near.mean())


def test_depth_boundaries_are_plentiful():
    fractions = [_boundary_fraction(r.depth, r.ids) for r in (render(make_scene(s, (128, 128))) for s in range(10))]
    assert min(fractions) > 0.01
    assert np.mean(fractions) > 0.05


def test_alpha_is_a_binary_non_empty_matte():
    for seed in range(8):
        s = render_scene(seed, SIZE)
        assert s.alpha is not None and s.alpha.dtype == np.float32 and s.alpha.shape == SIZE
        assert set(np.unique(s.alpha)) <= {0.0, 1.0}
        assert 0 < s.alpha.sum() < 0.6 * s.alpha.size
        assert (s.depth[s.alpha > 0] > 0).all(), "the matte covers a real object"


def _read_tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """Group a shard's members by key without webdataset's decoders."""
    groups: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            groups.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return groups


@pytest.mark.parametrize("depth_format", ["npy32", "png16"])
def test_shards_round_trip(tmp_path, depth_format):
    index_path = synth.write_synthetic_shards(tmp_path, "synth", count=3, size=(40, 56), seed=11,
                                              samples_per_shard=2, depth_format=depth_format,
                                              image_format="png", progress=False)
    index = read_index(index_path)
    assert index["samples"] == 3 and [s["samples"] for s in index["shards"]] == [2, 1]
    raws = {}
    for shard in index["shards"]:
        raws.update(_read_tar_samples(tmp_path / shard["name"]))
    assert len(raws) == 3
    for seed in (11, 12, 13):
        ref = render_scene(seed, (40, 56))
        raw = raws[ref.key]
        got = decode_sample(raw)
        assert np.array_equal(got.image, ref.image)
        assert np.array_equal(got.valid, ref.valid)
        step = json.loads(raw["json"]).get("depth_png_scale", 0.0)  # png16: depth quantised to this step
        np.testing.assert_allclose(got.depth, ref.depth, rtol=0, atol=step / 2 + 1e-6)
        np.testing.assert_array_equal(got.alpha, ref.alpha)
        assert got.meta == ref.meta


def test_examples_are_panels(tmp_path):
    from PIL import Image

    paths = synth.save_examples(tmp_path, 2, size=(32, 48), seed=3)
    assert [p.name for p in paths] == ["synth_0.png", "synth_1.png"]
    assert np.asarray(Image.open(paths[0])).shape == (32, 96, 3)
