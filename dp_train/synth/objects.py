"""Objects of known size that pin an image's metric scale: people, doors, cars, chairs, tables.

Their dimensions are drawn from ``priors.SIZE_PRIORS``; every method returns what it drew.
"""

from __future__ import annotations

import math

import numpy as np

from dp_train.synth.builder import hsv, random_material, shade_of
from dp_train.synth.geometry import Box, Cylinder, Sphere
from dp_train.synth.priors import draw_size
from dp_train.synth.scene import Material
from dp_train.synth.textures import PLAIN
from dp_train.synth.thin import ThinBuilder

DOOR_FRAME_M = 0.06
"""Width of a door's frame, which also stands this far above the door leaf."""


def _paint(rng: np.random.Generator, value: tuple[float, float] = (0.2, 0.9)) -> Material:
    """A plain painted or wooden surface."""
    c = hsv(rng, (0.0, 1.0), (0.05, 0.6), value)
    return Material(c, shade_of(rng, c, 0.25), PLAIN, float(rng.uniform(2.0, 6.0)), 0.1)


class ObjectBuilder(ThinBuilder):
    """A ThinBuilder that also places objects of known size; each returns the dimensions it drew."""

    def _frame(self, yaw: float) -> tuple[tuple[float, float], tuple[float, float]]:
        """Ground-plane unit vectors along (e1) and across (e3) an object turned by yaw, as Box uses them."""
        return (math.cos(yaw), math.sin(yaw)), (-math.sin(yaw), math.cos(yaw))

    def person(self) -> dict[str, float]:
        """A standing person: legs, torso, arms, neck and head, ``height`` from the sole to the top of the head."""
        rng, scene = self.rng, self.scene
        size = draw_size(rng, "person")
        h = size["height"]
        x, z = self.spot(1.5, 30.0, 0.15 * h)
        yaw = float(rng.uniform(0.0, math.pi))
        (ax, az), (bx, bz) = self._frame(yaw)
        g = scene.new_group()
        cloth, skin = random_material(rng), _paint(rng, (0.3, 0.8))
        for side in (-1.0, 1.0):
            lx, lz = x + side * 0.055 * h * ax, z + side * 0.055 * h * az
            scene.add(Cylinder((lx, 0.0, lz), (lx, 0.48 * h, lz), 0.045 * h), cloth, g)
            sx, sz = x + side * 0.13 * h * ax, z + side * 0.13 * h * az
            scene.add(Cylinder((sx, 0.8 * h, sz), (sx + side * 0.02 * h * ax, 0.45 * h, sz + side * 0.02 * h * az),
                               0.022 * h), cloth, g)
        scene.add(Box((x, 0.645 * h, z), (0.11 * h, 0.165 * h, 0.055 * h), yaw), random_material(rng), g)
        scene.add(Cylinder((x, 0.8 * h, z), (x, 0.88 * h, z), 0.028 * h), skin, g)
        scene.add(Sphere((x, 0.935 * h, z), 0.065 * h), skin, g)
        return size

    def door(self) -> dict[str, float]:
        """A door leaf in a frame against the back wall (closed scenes only: it needs a wall)."""
        rng, scene = self.rng, self.scene
        size = draw_size(rng, "door")
        h, w, fw = size["height"], size["width"], DOOR_FRAME_M
        lo, hi = self.x_min + w, self.x_max - w
        x = float(rng.uniform(lo, hi)) if hi > lo else 0.5 * (self.x_min + self.x_max)
        z = self.z_max
        g = scene.new_group()
        scene.add(Box((x, 0.5 * h, z - 0.02), (0.5 * w, 0.5 * h, 0.02)), _paint(rng), g)
        frame = _paint(rng, (0.6, 0.95))
        for side in (-1.0, 1.0):
            scene.add(Box((x + side * 0.5 * (w + fw), 0.5 * (h + fw), z - 0.04), (0.5 * fw, 0.5 * (h + fw), 0.04)), frame, g)
        scene.add(Box((x, h + 0.5 * fw, z - 0.04), (0.5 * w, 0.5 * fw, 0.04)), frame, g)
        return size

    def car(self, lane: float | None = None) -> dict[str, float]:
        """A car: lower body, cabin and four wheels; in a lane along the road when ``lane`` (x, m) is given."""
        rng, scene = self.rng, self.scene
        size = draw_size(rng, "car")
        length, width, h = size["length"], size["width"], size["height"]
        if lane is None:
            x, z = self.spot(3.0, 40.0, 0.5 * length)
            yaw = float(rng.uniform(0.0, math.pi))
        else:
            x, z = lane, float(np.exp(rng.uniform(math.log(6.0), math.log(60.0))))
            yaw = math.pi / 2 + float(rng.uniform(-0.05, 0.05))
        (ax, az), (bx, bz) = self._frame(yaw)
        g = scene.new_group()
        paint = random_material(rng)
        belt = 0.2 + 0.5 * (h - 0.2)
        scene.add(Box((x, 0.5 * (0.2 + belt), z), (0.5 * length, 0.5 * (belt - 0.2), 0.5 * width), yaw), paint, g)
        cab = -0.05 * length
        scene.add(Box((x + cab * ax, 0.5 * (belt + h), z + cab * az), (0.27 * length, 0.5 * (h - belt), 0.45 * width), yaw),
                  Material((0.15, 0.2, 0.25), paint.c1, PLAIN, 1.0, 0.05), g)
        tyre, r = Material((0.05, 0.05, 0.05), (0.1, 0.1, 0.1), PLAIN, 1.0, 0.05), float(rng.uniform(0.3, 0.34))
        for along in (-0.33 * length, 0.33 * length):
            for across in (-1.0, 1.0):
                cx, cz = x + along * ax + across * (0.5 * width - 0.12) * bx, z + along * az + across * (0.5 * width - 0.12) * bz
                scene.add(Cylinder((cx - 0.1 * bx, r, cz - 0.1 * bz), (cx + 0.1 * bx, r, cz + 0.1 * bz), r), tyre, g)
        return size

    def chair(self, near: tuple[float, float] | None = None) -> dict[str, float]:
        """A chair: four thin legs, a seat whose top is at ``seat`` and a back up to ``back``; by ``near`` if given."""
        rng, scene = self.rng, self.scene
        size = draw_size(rng, "chair")
        seat, w, back = size["seat"], size["width"], size["back"]
        x, z = self.spot(1.0, 12.0, 0.5 * w) if near is None else near
        yaw = float(rng.uniform(0.0, 2 * math.pi))
        (ax, az), (bx, bz) = self._frame(yaw)
        g = scene.new_group(thin=True)
        mat = _paint(rng)
        scene.add(Box((x, seat - 0.02, z), (0.5 * w, 0.02, 0.5 * w), yaw), mat, g)
        for sa, sb in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            lx, lz = x + sa * 0.43 * w * ax + sb * 0.43 * w * bx, z + sa * 0.43 * w * az + sb * 0.43 * w * bz
            scene.add(Cylinder((lx, 0.0, lz), (lx, seat - 0.04, lz), 0.015), mat, g)
        bx0, bz0 = x - 0.47 * w * bx, z - 0.47 * w * bz
        scene.add(Box((bx0, 0.5 * (seat + back), bz0), (0.5 * w, 0.5 * (back - seat), 0.015), yaw), mat, g)
        return size

    def table(self) -> dict[str, float]:
        """A table: a top at ``height`` on four thin legs, with up to four chairs around it."""
        rng, scene = self.rng, self.scene
        size = draw_size(rng, "table")
        h, length, width = size["height"], size["length"], size["width"]
        x, z = self.spot(1.5, 12.0, 0.5 * length)
        yaw = float(rng.uniform(0.0, math.pi))
        (ax, az), (bx, bz) = self._frame(yaw)
        g = scene.new_group(thin=True)
        mat = _paint(rng)
        scene.add(Box((x, h - 0.015, z), (0.5 * length, 0.015, 0.5 * width), yaw), mat, g)
        for sa, sb in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            lx, lz = x + sa * (0.5 * length - 0.06) * ax + sb * (0.5 * width - 0.06) * bx, \
                z + sa * (0.5 * length - 0.06) * az + sb * (0.5 * width - 0.06) * bz
            scene.add(Cylinder((lx, 0.0, lz), (lx, h - 0.03, lz), 0.025), mat, g)
        for _ in range(int(rng.integers(0, 5))):
            side = float(rng.choice([-1.0, 1.0]))
            along = float(rng.uniform(-0.3, 0.3)) * length
            cx, cz = x + along * ax + side * (0.5 * width + 0.3) * bx, z + along * az + side * (0.5 * width + 0.3) * bz
            if self.inside(cx, cz):
                self.chair((cx, cz))
        return size

    def traffic(self) -> dict[str, float]:
        """A car on the road (``ground(road=True)``): in one of the three lanes ahead, or parked beyond an edge line."""
        rng, w = self.rng, self.lane_width
        k = int(rng.integers(-2, 3))
        x = k * w if abs(k) <= 1 else math.copysign(2.5 * w + 1.5, k)
        return self.car(lane=x)
