"""Thin structures with sharp depth boundaries, without a size prior: pole lines, wires, fences, trees, bushes
and lamps, each one object group flagged thin (``render`` mattes such a group for boundary recall)."""

from __future__ import annotations

import math

import numpy as np

from dp_train.synth.builder import Builder, hsv, random_material, shade_of
from dp_train.synth.geometry import Box, Cylinder, Disc, Sphere
from dp_train.synth.scene import Material
from dp_train.synth.textures import PLAIN, STRIPES


class ThinBuilder(Builder):
    """A Builder that also places thin structures."""

    def pole_line(self, indoor: bool) -> None:
        """Poles in a row with sagging wires between their tops (and sometimes cross bars)."""
        rng, scene = self.rng, self.scene
        g = scene.new_group(thin=True)
        x0, z0 = self.spot(2.0, 25.0)
        ang = float(rng.uniform(0.0, math.pi))
        ex, ez = math.cos(ang), math.sin(ang)
        spacing = float(rng.uniform(1.5, 4.0) if indoor else rng.uniform(3.0, 10.0))
        top = float(rng.uniform(1.2, 2.5) if indoor else rng.uniform(3.0, 8.0))
        r = float(rng.uniform(0.02, 0.06) if indoor else rng.uniform(0.04, 0.14))
        mat = Material(hsv(rng, (0.05, 0.12), (0.1, 0.6), (0.2, 0.7)), hsv(rng, (0, 1), (0, 0.2), (0.3, 0.6)), PLAIN, 3.0, 0.15)
        tops = []
        for k in range(int(rng.integers(2, 7))):
            x, z = x0 + (k - 1) * spacing * ex, z0 + (k - 1) * spacing * ez
            if not self.inside(x, z):
                continue
            scene.add(Cylinder((x, 0.0, z), (x, top, z), r), mat, g)
            if rng.random() < 0.5:
                arm = float(rng.uniform(0.4, 0.9))
                scene.add(Cylinder((x - arm * ez, top - 0.25, z + arm * ex), (x + arm * ez, top - 0.25, z - arm * ex), r * 0.6), mat, g)
            tops.append((x, z))
        wire = Material((0.1, 0.1, 0.1), (0.2, 0.2, 0.2), PLAIN, 1.0, 0.05)
        n_wires, wr = int(rng.integers(1, 4)), float(rng.uniform(0.008, 0.025) if indoor else rng.uniform(0.012, 0.035))
        for (xa, za), (xb, zb) in zip(tops[:-1], tops[1:]):
            for j in range(n_wires):
                y = top - 0.1 - 0.3 * j
                self.sagging_wire((xa, y, za), (xb, y, zb), float(rng.uniform(0.05, 0.5)), wr, wire, g)

    def sagging_wire(self, a: tuple, b: tuple, sag: float, r: float, mat: Material, g: int, pieces: int = 4) -> None:
        """A wire from a to b drooping by `sag` metres at its middle, as straight pieces."""
        s = np.linspace(0.0, 1.0, pieces + 1)
        pts = np.outer(1 - s, a) + np.outer(s, b)
        pts[:, 1] -= 4.0 * sag * s * (1 - s)
        for p, q in zip(pts[:-1], pts[1:]):
            self.scene.add(Cylinder(tuple(map(float, p)), tuple(map(float, q)), r), mat, g)

    def overhead_wires(self) -> None:
        """Long wires across the view, high up."""
        rng, scene = self.rng, self.scene
        g = scene.new_group(thin=True)
        z = float(rng.uniform(4.0, min(30.0, self.z_max - 0.5)))
        ang = float(rng.uniform(-0.4, 0.4))
        half = 2.5 * z * self.tan_half + 5.0
        y = scene.camera.height + float(rng.uniform(1.0, 5.0))
        mat = Material((0.08, 0.08, 0.08), (0.15, 0.15, 0.15), PLAIN, 1.0, 0.05)
        for j in range(int(rng.integers(1, 4))):
            dz = 0.4 * j
            a = (-half * math.cos(ang), y - 0.25 * j, z + dz - half * math.sin(ang))
            b = (half * math.cos(ang), y - 0.25 * j, z + dz + half * math.sin(ang))
            if min(a[2], b[2]) > 0.5:
                self.sagging_wire(a, b, float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.01, 0.03)), mat, g, pieces=6)

    def fence(self) -> None:
        """A row of slats (boxes) or bars (cylinders) with rails."""
        rng, scene = self.rng, self.scene
        g = scene.new_group(thin=True)
        length, height = float(rng.uniform(3.0, 14.0)), float(rng.uniform(0.7, 2.0))
        x0, z0 = self.spot(2.0, 18.0, 0.5 * height)
        ang = float(rng.uniform(-0.7, 0.7) + (math.pi / 2 if rng.random() < 0.25 else 0.0))
        ex, ez = math.cos(ang), math.sin(ang)
        spacing = float(rng.uniform(0.1, 0.3))
        bars = rng.random() < 0.4
        c = hsv(rng, (0.0, 1.0), (0.0, 0.6), (0.3, 0.95))
        mat = Material(c, shade_of(rng, c, 0.3), PLAIN, 4.0, 0.15)
        placed = []
        for k in range(min(int(length / spacing), 70)):
            s = k * spacing - 0.5 * length
            x, z = x0 + s * ex, z0 + s * ez
            if not self.inside(x, z):
                continue
            placed.append((x, z))
            if bars:
                scene.add(Cylinder((x, 0.0, z), (x, height, z), spacing * float(rng.uniform(0.12, 0.25))), mat, g)
            else:
                half = (spacing * float(rng.uniform(0.2, 0.4)), height / 2, 0.012)
                scene.add(Box((x, height / 2, z), half, ang), mat, g)
        if len(placed) < 2:
            return
        (xa, za), (xb, zb) = placed[0], placed[-1]
        off = 0.0 if bars else 0.03
        for y in ([height] if bars else [0.25 * height, 0.8 * height]):
            scene.add(Cylinder((xa - off * ez, y, za + off * ex), (xb - off * ez, y, zb + off * ex), 0.025), mat, g)

    def foliage(self, centre: tuple, radii: tuple, count: int, size: tuple[float, float], g: int,
                lift: bool = False) -> None:
        """Many small spheres and leaf discs filling an ellipsoid (biased to its shell)."""
        rng, scene = self.rng, self.scene
        base = hsv(rng, (0.18, 0.36), (0.35, 0.85), (0.2, 0.6))
        dirs = rng.standard_normal((count, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        pos = np.asarray(centre) + dirs * rng.uniform(0.45, 1.0, (count, 1)) ** 0.5 * np.asarray(radii)
        normals = rng.standard_normal((count, 3))
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        for p, nrm, r, disc in zip(pos, normals, rng.uniform(*size, count), rng.random(count) < 0.4):
            c = shade_of(rng, base, 0.3)
            mat = Material(c, shade_of(rng, c, 0.3), PLAIN, 6.0, 0.2)
            x, y, z = map(float, p)
            y = max(y, float(r) * 0.6) if lift else y
            if z < 0.3:
                continue
            prim = Disc((x, y, z), tuple(map(float, nrm)), float(r) * 1.2) if disc else Sphere((x, y, z), float(r))
            scene.add(prim, mat, g)

    def tree(self) -> None:
        """Trunk, a few branches, and a crown of leaf spheres and discs."""
        rng, scene = self.rng, self.scene
        g = scene.new_group(thin=True)
        trunk_h, r = float(rng.uniform(1.5, 4.0)), float(rng.uniform(0.08, 0.25))
        bark = Material(hsv(rng, (0.05, 0.1), (0.3, 0.6), (0.15, 0.4)), hsv(rng, (0.05, 0.1), (0.2, 0.5), (0.1, 0.3)), STRIPES, 8.0, 0.3)
        radii = (float(rng.uniform(1.0, 2.5)), float(rng.uniform(1.0, 2.5)), float(rng.uniform(1.0, 2.5)))
        x, z = self.spot(3.0, 30.0, 0.6 * max(radii))
        centre = (x, trunk_h + 0.8 * radii[1], z)
        scene.add(Cylinder((x, 0.0, z), (x, trunk_h + 0.3, z), r), bark, g)
        for _ in range(int(rng.integers(2, 6))):
            tip = np.asarray(centre) + rng.uniform(-0.8, 0.8, 3) * np.asarray(radii)
            start = (x, trunk_h * float(rng.uniform(0.75, 1.0)), z)
            scene.add(Cylinder(start, tuple(map(float, tip)), r * float(rng.uniform(0.25, 0.45))), bark, g)
        self.foliage(centre, radii, int(rng.integers(40, 100)), (0.08, 0.28), g)

    def bush(self) -> None:
        """A low clump of leaf spheres and discs (a potted plant indoors)."""
        rng = self.rng
        rad = float(rng.uniform(0.4, 1.2))
        x, z = self.spot(1.5, 20.0, 0.7 * rad)
        self.foliage((x, 0.4 * rad, z), (rad, 0.7 * rad, rad), int(rng.integers(15, 40)), (0.07, 0.25),
                     self.scene.new_group(thin=True), lift=True)

    def lamp(self) -> None:
        """Indoor standing lamp: a thin pole with a ball on top."""
        rng, scene = self.rng, self.scene
        g = scene.new_group(thin=True)
        x, z = self.spot(1.0, 10.0)
        top = float(rng.uniform(1.0, 1.9))
        mat = Material(hsv(rng, (0, 1), (0, 0.3), (0.1, 0.8)), (0.5, 0.5, 0.5), PLAIN, 3.0, 0.05)
        scene.add(Cylinder((x, 0.0, z), (x, top, z), float(rng.uniform(0.01, 0.03))), mat, g)
        scene.add(Sphere((x, top + 0.15, z), float(rng.uniform(0.1, 0.25))), random_material(rng), g)
