"""Scene content without a size prior: ground, walls, backdrop, boxes and spheres; colours, materials and lighting.

Thin structures (poles, wires, fences, foliage) are in ``thin``, objects of known size in ``objects``."""

from __future__ import annotations

import colorsys
import math

import numpy as np

from dp_train.synth.geometry import Box, Plane, Sphere
from dp_train.synth.scene import Material, Scene
from dp_train.synth.priors import BRICK_M, CEILING_M, JOINT_M, LANE_WIDTH_M, STOREY_M, TILE_SIDES_M
from dp_train.synth.textures import BRICKS, CHECKER, GROUND, LANES, PLAIN, STRIPES, TILES, WINDOWS

def hsv(rng: np.random.Generator, h: tuple[float, float], s: tuple[float, float], v: tuple[float, float]) -> tuple:
    """A random display-space RGB colour from HSV ranges (hue wraps)."""
    return colorsys.hsv_to_rgb(rng.uniform(*h) % 1.0, rng.uniform(*s), rng.uniform(*v))


def shade_of(rng: np.random.Generator, c: tuple, amount: float) -> tuple:
    """c with random brightness and slight per-channel jitter."""
    k = 1.0 + rng.uniform(-amount, amount)
    jitter = rng.uniform(-0.3 * amount, 0.3 * amount, 3)
    return tuple(min(max(float(x * k * (1.0 + j)), 0.0), 1.0) for x, j in zip(c, jitter))


def random_material(rng: np.random.Generator) -> Material:
    """A man-made object's material: painted, checkered or striped."""
    c1 = hsv(rng, (0.0, 1.0), (0.15, 0.85), (0.25, 0.95))
    kind = int(rng.choice([PLAIN, PLAIN, CHECKER, STRIPES]))
    c2 = hsv(rng, (0.0, 1.0), (0.1, 0.8), (0.2, 0.95)) if kind != PLAIN else shade_of(rng, c1, 0.35)
    return Material(c1, c2, kind, float(rng.uniform(1.0, 5.0)), float(rng.uniform(0.03, 0.2)))


class Builder:
    """Fills a Scene with random content that lies inside the camera's view and the walls."""

    def __init__(self, scene: Scene, rng: np.random.Generator):
        self.scene, self.rng = scene, rng
        cam = scene.camera
        self.tan_half = 0.5 * cam.size[1] / cam.f_px
        self.z_max, self.x_min, self.x_max = 60.0, -np.inf, np.inf
        self.lane_width = 0.0  # > 0 once the ground is a road

    def spot(self, z_lo: float, z_hi: float, size: float = 0.0, spread: float = 1.15,
             margin: float = 0.5) -> tuple[float, float]:
        """Random ground point (x, z), log-uniform in depth, laterally within the (slightly widened) view.

        An object of half extent ``size`` is kept far enough away to cover at most about a third of the view.
        """
        z_lo = max(z_lo, size / (0.35 * self.tan_half), size + 0.5)
        z_hi = max(min(z_hi, self.z_max - margin), z_lo + 0.1)
        z = float(np.exp(self.rng.uniform(math.log(z_lo), math.log(z_hi))))
        x = float(self.rng.uniform(-1.0, 1.0) * spread * z * self.tan_half)
        return float(np.clip(x, self.x_min + margin, self.x_max - margin)), z

    def inside(self, x: float, z: float, margin: float = 0.2) -> bool:
        """Whether a ground point lies in front of the camera and inside the walls."""
        return 0.5 < z < self.z_max - margin and self.x_min + margin < x < self.x_max - margin

    # ---- static structure

    def ground(self, indoor: bool, road: bool = False) -> None:
        """Object 0: the ground plane: a road with lane markings, or tiles, checker, asphalt, grass or sand
        (indoors: the first three)."""
        rng = self.rng
        choice = rng.integers(3) if indoor else rng.integers(5)
        if road:
            self.lane_width = float(rng.uniform(*LANE_WIDTH_M))
            grey = hsv(rng, (0.05, 0.15), (0.0, 0.1), (0.2, 0.4))
            mat = Material(grey, hsv(rng, (0.1, 0.16), (0.0, 0.15), (0.85, 0.97)), LANES, 1.0 / self.lane_width, 0.2)
        elif choice == 0:
            mat = Material(hsv(rng, (0, 1), (0.0, 0.3), (0.5, 0.9)), hsv(rng, (0, 1), (0.0, 0.3), (0.2, 0.5)),
                           TILES, 1.0 / float(rng.choice(TILE_SIDES_M)), 0.08)
        elif choice == 1:
            mat = Material(hsv(rng, (0, 1), (0.0, 0.4), (0.3, 0.9)), hsv(rng, (0, 1), (0.0, 0.4), (0.1, 0.6)),
                           CHECKER, float(rng.uniform(0.4, 1.5)), 0.1)
        elif choice == 2:
            grey = hsv(rng, (0.05, 0.15), (0.0, 0.15), (0.2, 0.5))
            mat = Material(grey, shade_of(rng, grey, 0.4), PLAIN, float(rng.uniform(0.3, 2.0)), 0.35)
        elif choice == 3:
            mat = Material(hsv(rng, (0.2, 0.33), (0.4, 0.8), (0.25, 0.55)), hsv(rng, (0.08, 0.16), (0.3, 0.7), (0.3, 0.6)),
                           GROUND, float(rng.uniform(0.1, 0.5)), 0.4)
        else:
            mat = Material(hsv(rng, (0.07, 0.12), (0.2, 0.5), (0.5, 0.85)), hsv(rng, (0.05, 0.1), (0.3, 0.6), (0.3, 0.6)),
                           GROUND, float(rng.uniform(0.1, 0.6)), 0.3)
        self.scene.add(Plane((0.0, 1.0, 0.0), 0.0), mat, -1, False)

    def walls(self, indoor: bool) -> None:
        """Back wall, side walls and (indoors) a ceiling at a room's height: closes the scene so no sky is visible."""
        rng, scene = self.rng, self.scene
        self.z_max = float(rng.uniform(5.0, 15.0) if indoor else rng.uniform(12.0, 50.0))
        reach = self.z_max * self.tan_half
        self.x_min = -float(rng.uniform(0.4, 1.2) * reach)
        self.x_max = float(rng.uniform(0.4, 1.2) * reach)
        for n, off in [((0.0, 0.0, 1.0), self.z_max), ((1.0, 0.0, 0.0), self.x_min), ((1.0, 0.0, 0.0), self.x_max)]:
            scene.add(Plane(n, off), self.wall_material(indoor), -1, False)
        if indoor:
            c = hsv(rng, (0, 1), (0.0, 0.1), (0.7, 0.95))
            height = float(rng.uniform(*CEILING_M))
            scene.add(Plane((0.0, 1.0, 0.0), height), Material(c, shade_of(rng, c, 0.2), PLAIN, 0.5, 0.05), -1, False)

    def wall_material(self, indoor: bool) -> Material:
        """Bricks, a facade with windows (outdoors) or plain paint."""
        rng = self.rng
        kind = int(rng.choice([PLAIN, BRICKS] if indoor else [BRICKS, WINDOWS, PLAIN]))
        if kind == BRICKS:
            return Material(hsv(rng, (0.0, 0.08), (0.3, 0.7), (0.35, 0.75)), hsv(rng, (0, 1), (0.0, 0.1), (0.6, 0.85)),
                            BRICKS, 1.0 / (BRICK_M[0] + JOINT_M), 0.15)
        if kind == WINDOWS:
            return Material(hsv(rng, (0.05, 0.15), (0.05, 0.35), (0.5, 0.9)), hsv(rng, (0.55, 0.65), (0.2, 0.5), (0.15, 0.4)),
                            WINDOWS, 1.0 / float(rng.uniform(*STOREY_M)), 0.1)
        c = hsv(rng, (0, 1), (0.05, 0.4), (0.5, 0.95))
        return Material(c, shade_of(rng, c, 0.3), PLAIN, float(rng.uniform(0.2, 1.0)), 0.1)

    def backdrop(self) -> None:
        """Distant hills and buildings against the sky, low enough to leave sky at the top of the image."""
        rng, scene, cam = self.rng, self.scene, self.scene.camera
        v_half = math.atan(0.5 * cam.size[0] / cam.f_px)
        slope = math.tan(max(0.0, 0.5 * (cam.pitch + v_half) - abs(cam.roll)))

        def max_top(z: float) -> float:
            """Highest top (m) at depth z that stays below the sky band at the top of the image."""
            return cam.height + z * slope

        for _ in range(rng.integers(0, 3)):
            r = float(rng.uniform(25.0, 70.0))
            z = float(rng.uniform(90.0, 135.0))
            y = min(-r * float(rng.uniform(0.75, 0.93)), max_top(z - r) - r)
            mat = Material(hsv(rng, (0.2, 0.35), (0.3, 0.7), (0.2, 0.45)), hsv(rng, (0.1, 0.2), (0.3, 0.6), (0.3, 0.5)),
                           GROUND, 0.1, 0.2)
            scene.add(Sphere((float(rng.uniform(-1.0, 1.0) * z * self.tan_half), y, z), r), mat, -1, False)
        for _ in range(rng.integers(0, 5)):
            x, z = self.spot(30.0, 100.0, spread=1.4)
            half = [float(rng.uniform(4.0, 15.0)), float(rng.uniform(3.0, 18.0)), float(rng.uniform(4.0, 10.0))]
            half[1] = min(half[1], 0.5 * max_top(z - max(half[0], half[2])))
            mat = self.wall_material(False)
            if half[1] > 1.5:
                scene.add(Box((x, half[1], z + half[2]), tuple(half), float(rng.uniform(-0.5, 0.5))), mat, -1, False)

    # ---- objects

    def box(self) -> None:
        """A turned box on the ground, sometimes with a smaller one on top."""
        rng, scene = self.rng, self.scene
        g = scene.new_group()
        half = tuple(float(v) for v in rng.uniform(0.15, 1.5, 3))
        x, z = self.spot(1.5, 25.0, max(half))
        yaw = float(rng.uniform(0, math.pi))
        scene.add(Box((x, half[1], z), half, yaw), random_material(rng), g)
        if rng.random() < 0.3:
            top = tuple(float(v) for v in rng.uniform(0.1, 0.8, 3) * np.array(half))
            scene.add(Box((x, 2 * half[1] + top[1], z), top, yaw + float(rng.uniform(-0.5, 0.5))), random_material(rng), g)

    def sphere(self) -> None:
        """A ball on the ground or floating above it."""
        rng, scene = self.rng, self.scene
        r = float(rng.uniform(0.15, 1.3))
        x, z = self.spot(1.5, 25.0, r)
        y = r + (float(rng.uniform(0.2, 2.0)) if rng.random() < 0.3 else 0.0)
        scene.add(Sphere((x, y, z), r), random_material(rng), scene.new_group())


def lighting(scene: Scene, rng: np.random.Generator, indoor: bool) -> None:
    """Random sun, sky colours, haze and sensor noise."""
    az, el = rng.uniform(0.0, 2 * math.pi), math.radians(rng.uniform(25.0, 70.0))
    scene.sun = (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))
    warm = rng.uniform(0.0, 0.2)
    scene.sun_colour = tuple(float(v) * rng.uniform(0.9, 1.3) for v in (1.0, 1.0 - 0.5 * warm, 1.0 - warm))
    scene.ambient = float(rng.uniform(0.25, 0.45))
    scene.sky_zenith = hsv(rng, (0.55, 0.63), (0.35, 0.75), (0.6, 0.95))
    scene.sky_horizon = hsv(rng, (0.52, 0.62), (0.05, 0.3), (0.8, 0.97))
    scene.cloudiness = float(rng.uniform(0.0, 0.7))
    scene.fog_m = 1e4 if indoor else float(rng.uniform(80.0, 400.0))
    scene.noise_sigma = float(rng.uniform(0.5, 3.0)) / 255.0

