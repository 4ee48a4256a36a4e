"""Scale cues of the procedural world (dp_train.synth.priors, objects): sizes, camera heights, exact depth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_train.synth import Camera, Scene, make_scene, render
from dp_train.synth.objects import DOOR_FRAME_M, ObjectBuilder
from dp_train.synth.priors import CAMERA_RIGS, LANE_DASH_M, LANE_LINE_M, SIZE_PRIORS
from dp_train.synth.textures import LANES, pattern

TOP = {"person": "height", "car": "height", "chair": "back", "table": "height", "door": "height"}
"""The dimension that is the top of each object's geometry above the ground."""


def _builder(seed: int, indoor: bool = False) -> ObjectBuilder:
    """An ObjectBuilder for a closed courtyard or room seen by a level camera (doors need walls)."""
    scene = Scene(camera=Camera((96, 128), 60.0, 1.5), sky=False)
    b = ObjectBuilder(scene, np.random.default_rng(seed))
    b.ground(indoor)
    b.walls(indoor)
    return b


@pytest.mark.parametrize("kind", sorted(SIZE_PRIORS))
def test_object_sizes_lie_in_their_priors_and_shape_the_geometry(kind):
    """Every drawn dimension lies in its range, and the object's first group stands on the ground up to its top."""
    tops = []
    for seed in range(25):
        b = _builder(seed)
        first, group = len(b.scene.prims), b.scene.next_group
        size = getattr(b, kind)()
        for name, (lo, hi) in SIZE_PRIORS[kind].items():
            assert lo <= size[name] <= hi, (kind, name, size[name])
        bounds = np.stack([bd for bd, g in zip(b.scene.bounds[first:], b.scene.groups[first:]) if g == group])
        top = size[TOP[kind]] + (DOOR_FRAME_M if kind == "door" else 0.0)
        assert bounds[:, 1, 1].max() == pytest.approx(top, abs=1e-9)
        assert -0.1 <= bounds[:, 0, 1].min() <= 0.0, "stands on the ground (cylinder bounds reach r below)"
        tops.append(size[TOP[kind]])
    lo, hi = SIZE_PRIORS[kind][TOP[kind]]
    assert max(tops) - min(tops) > 0.5 * (hi - lo), "sizes should spread over the prior"


def test_car_body_has_the_drawn_length_and_width():
    for seed in range(10):
        b = _builder(seed)
        first = len(b.scene.prims)
        size = b.car()
        body = b.scene.prims[first]
        assert body.half[0] == pytest.approx(0.5 * size["length"]) and body.half[2] == pytest.approx(0.5 * size["width"])


def test_camera_heights_follow_the_rig_priors():
    rigs = {}
    for seed in range(150):
        scene = make_scene(seed, (24, 32))
        lo, hi = CAMERA_RIGS[scene.rig]
        assert lo <= scene.camera.height <= hi, (seed, scene.rig, scene.camera.height)
        assert 30.0 <= scene.camera.fov_deg <= 100.0
        rigs.setdefault(scene.rig, []).append(scene.camera.height)
    assert set(rigs) == set(CAMERA_RIGS), "every rig should occur"
    heights = np.concatenate(list(rigs.values()))
    assert heights.max() - heights.min() > 0.4, "camera heights keep some spread"


def test_scene_content_is_deterministic_per_seed():
    a, b = make_scene(12, (32, 32)), make_scene(12, (32, 32))
    assert a.prims == b.prims and a.materials == b.materials and a.groups == b.groups and a.rig == b.rig
    assert a.prims != make_scene(13, (32, 32)).prims


def test_door_on_the_back_wall_has_exact_depth():
    """A level camera sees the door leaf, a box face 4 cm in front of the back wall, at one exact z-depth."""
    for seed in range(5):
        b = _builder(seed, indoor=True)
        leaf = len(b.scene.prims)
        b.door()
        out = render(b.scene)
        on_leaf = out.ids == leaf
        assert on_leaf.sum() > 20
        np.testing.assert_allclose(out.depth[on_leaf], b.z_max - 0.04, rtol=1e-6)


def test_lane_markings_have_standard_width_and_dashes():
    """On a road with 3.5 m lanes, separators are painted at x = +-1.75 m for 3 m of every 12 m, 0.15 m wide."""
    w = 3.5
    s = np.array([1.0 / w])

    def paint(x: float, z: float) -> float:
        p = (np.array([x]), np.array([0.0]), np.array([z]))
        return float(pattern(LANES, p, (p[0], p[2]), s)[0])

    period = sum(LANE_DASH_M)
    assert paint(0.5 * w, 1.0) == 1.0 and paint(-1.5 * w, 1.0 + period) == 1.0
    assert paint(0.5 * w + 0.6 * LANE_LINE_M, 1.0) < 1.0, "lines are LANE_LINE_M wide"
    assert paint(0.5 * w, LANE_DASH_M[0] + 1.0) < 1.0, "separators are dashed"
    assert paint(2.5 * w, LANE_DASH_M[0] + 1.0) == 1.0, "edge lines are solid"
    assert paint(0.0, 1.0) < 1.0 and paint(3.5 * w, 1.0) < 1.0
    assert math.isclose(LANE_LINE_M, 0.15)
