"""Camera and ray-cast primitives of the procedural world: exact, vectorised ray intersections.

Rays are scaled so their camera-z component is 1, so the ray parameter of a hit *is* its z-depth.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

FAR_M = 150.0
"""Anything farther than this (z-depth, metres) counts as sky: depth 0."""
EPS = 1e-6
NEAR_M = 0.02

Num = float | np.ndarray
Vec = tuple  # (x, y, z) components: floats or arrays that broadcast together


def dot(a: Vec, b: Vec) -> Num:
    """Dot product of two component tuples."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


# --------------------------------------------------------------------------- camera


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at (0, height, 0) looking along world +Z (world Y is up, ground is Y = 0).

    Camera axes follow OpenCV: x right, y down, z forward. Positive pitch looks up;
    roll turns the image about the optical axis.
    """

    size: tuple[int, int]  # (H, W)
    f_px: float
    height: float
    pitch: float = 0.0  # radians
    roll: float = 0.0  # radians

    @property
    def fov_deg(self) -> float:
        """Horizontal field of view in degrees."""
        return math.degrees(2.0 * math.atan(0.5 * self.size[1] / self.f_px))

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cx, cy): the image centre, pixel centres at integer coordinates."""
        return (self.size[1] - 1) / 2.0, (self.size[0] - 1) / 2.0

    @property
    def position(self) -> tuple[float, float, float]:
        """Camera centre in world coordinates."""
        return 0.0, self.height, 0.0

    def rotation(self) -> np.ndarray:
        """3x3 camera-to-world rotation (world = R @ camera)."""
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
        flip = np.diag([1.0, -1.0, 1.0])
        roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
        return pitch @ flip @ roll

    def rays(self) -> Vec:
        """World ray directions per pixel, scaled so their camera-z component is 1.

        With these directions the ray parameter ``t`` of a hit *is* its z-depth.
        """
        h, w = self.size
        cx, cy = self.principal_point
        u = ((np.arange(w) - cx) / self.f_px)[None, :]
        v = ((np.arange(h) - cy) / self.f_px)[:, None]
        r = self.rotation()
        return tuple(r[i, 0] * u + r[i, 1] * v + r[i, 2] for i in range(3))

    def windows(self, points: np.ndarray) -> np.ndarray:
        """Conservative pixel windows ``[v0, v1, u0, u1]`` (N, 4) of N convex point sets (N, K, 3).

        A set partly behind the camera gets the full image; one entirely beyond
        ``FAR_M`` or outside the image gets an empty window (v0 >= v1 or u0 >= u1).
        """
        h, w = self.size
        cx, cy = self.principal_point
        cam = (points - np.asarray(self.position)) @ self.rotation()
        z = cam[..., 2]
        behind = (z < NEAR_M).any(axis=1)
        zs = np.where(z < NEAR_M, 1.0, z)
        u = self.f_px * cam[..., 0] / zs + cx
        v = self.f_px * cam[..., 1] / zs + cy
        win = np.stack([np.floor(v.min(1)), np.ceil(v.max(1)) + 1, np.floor(u.min(1)), np.ceil(u.max(1)) + 1], 1)
        win = np.clip(win, 0, [h, h, w, w]).astype(np.int64)
        win[behind] = [0, h, 0, w]
        win[(z > FAR_M).all(axis=1)] = 0
        return win


# --------------------------------------------------------------------------- primitives


class Primitive(Protocol):
    """A surface that rays can hit: vectorised over component arrays."""

    def intersect(self, o: Vec, d: Vec) -> np.ndarray:
        """Ray parameter of the nearest hit with t > EPS, inf where the ray misses."""

    def normal(self, p: Vec) -> Vec:
        """Outward unit normal at hit points p (either orientation for planes and discs)."""

    def bounds(self) -> np.ndarray | None:
        """(2, 3) world AABB [lo, hi], or None when unbounded."""


def _hit(t: np.ndarray) -> np.ndarray:
    """t where it is a valid hit (finite, > EPS), inf elsewhere."""
    with np.errstate(invalid="ignore"):
        return np.where(t > EPS, t, np.inf)


def _ball_bounds(centre: tuple[float, float, float], radius: float) -> np.ndarray:
    """Axis-aligned (2, 3) bounds [min, max] of the ball of `radius` around `centre`."""
    bounds = np.array([centre, centre], dtype=np.float64)
    bounds[0] -= radius
    bounds[1] += radius
    return bounds


def _full(p: Vec, value: float) -> np.ndarray:
    """An array shaped like the components of p, filled with value."""
    return np.full(np.shape(p[0]), value)


@dataclass(frozen=True)
class Plane:
    """Infinite plane {x : n . x = offset}."""

    n: tuple[float, float, float]
    offset: float

    def intersect(self, o: Vec, d: Vec) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return _hit((self.offset - dot(self.n, o)) / dot(self.n, d))

    def normal(self, p: Vec) -> Vec:
        return tuple(_full(p, c) for c in self.n)

    def bounds(self) -> np.ndarray | None:
        return None


@dataclass(frozen=True)
class Sphere:
    """Solid sphere."""

    c: tuple[float, float, float]
    r: float

    def intersect(self, o: Vec, d: Vec) -> np.ndarray:
        oc = tuple(o[i] - self.c[i] for i in range(3))
        a, b = dot(d, d), dot(oc, d)
        disc = b * b - a * (dot(oc, oc) - self.r * self.r)
        with np.errstate(invalid="ignore"):
            return _hit((-b - np.sqrt(disc)) / a)

    def normal(self, p: Vec) -> Vec:
        return tuple((p[i] - self.c[i]) / self.r for i in range(3))

    def bounds(self) -> np.ndarray | None:
        return _ball_bounds(self.c, self.r)


@dataclass(frozen=True)
class Box:
    """Solid box with half extents ``half`` (along e1, Y, e3), turned by ``yaw`` about the vertical."""

    c: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0

    def _axes(self) -> tuple[Vec, Vec, Vec]:
        """The box's unit axes e1, Y, e3 in world coordinates."""
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        return (cy, 0.0, sy), (0.0, 1.0, 0.0), (-sy, 0.0, cy)

    def _local(self, v: Vec, point: bool) -> Vec:
        """World vector (or point, relative to the centre) in box coordinates."""
        if point:
            v = tuple(v[i] - self.c[i] for i in range(3))
        return tuple(dot(e, v) for e in self._axes())

    def intersect(self, o: Vec, d: Vec) -> np.ndarray:
        ol, dl = self._local(o, True), self._local(d, False)
        tmin, tmax = -np.inf, np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in range(3):
                inv = 1.0 / dl[i]
                t1, t2 = (-self.half[i] - ol[i]) * inv, (self.half[i] - ol[i]) * inv
                tmin, tmax = np.maximum(tmin, np.minimum(t1, t2)), np.minimum(tmax, np.maximum(t1, t2))
            return _hit(np.where(tmax >= tmin, tmin, np.nan))

    def normal(self, p: Vec) -> Vec:
        pl = self._local(p, True)
        rel = np.stack([np.abs(pl[i]) / self.half[i] for i in range(3)])
        axis = np.argmax(rel, axis=0)
        nl = [np.where(axis == i, np.sign(pl[i]), 0.0) for i in range(3)]
        e = self._axes()
        return tuple(nl[0] * e[0][k] + nl[1] * e[1][k] + nl[2] * e[2][k] for k in range(3))

    def bounds(self) -> np.ndarray | None:
        cy, sy = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
        hx, hz = self.half[0] * cy + self.half[2] * sy, self.half[0] * sy + self.half[2] * cy
        c, h = np.asarray(self.c), np.array([hx, self.half[1], hz])
        return np.stack([c - h, c + h])


@dataclass(frozen=True)
class Cylinder:
    """Open finite cylinder (no caps) from p0 to p1 with radius r: poles, wires, bars, trunks."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r: float

    @functools.cached_property
    def _axis(self) -> tuple[Vec, float]:
        """Unit axis from p0 to p1 and the length."""
        a = np.subtract(self.p1, self.p0)
        length = float(np.linalg.norm(a))
        return tuple(float(x) for x in a / length), length

    def intersect(self, o: Vec, d: Vec) -> np.ndarray:
        a, length = self._axis
        w = tuple(o[i] - self.p0[i] for i in range(3))
        da, wa = dot(d, a), dot(w, a)
        dp = tuple(d[i] - da * a[i] for i in range(3))
        wp = tuple(w[i] - wa * a[i] for i in range(3))
        qa, qb = dot(dp, dp), dot(wp, dp)
        disc = qb * qb - qa * (dot(wp, wp) - self.r * self.r)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (-qb - np.sqrt(disc)) / qa
            s = wa + t * da
            return _hit(np.where((s >= 0) & (s <= length), t, np.nan))

    def normal(self, p: Vec) -> Vec:
        a, _ = self._axis
        w = tuple(p[i] - self.p0[i] for i in range(3))
        wa = dot(w, a)
        wp = tuple(w[i] - wa * a[i] for i in range(3))
        norm = np.maximum(np.sqrt(dot(wp, wp)), 1e-12)
        return tuple(c / norm for c in wp)

    def bounds(self) -> np.ndarray | None:
        p = np.array([self.p0, self.p1])
        return np.stack([p.min(0) - self.r, p.max(0) + self.r])


@dataclass(frozen=True)
class Disc:
    """Flat round disc (a leaf) with unit normal n."""

    c: tuple[float, float, float]
    n: tuple[float, float, float]
    r: float

    def intersect(self, o: Vec, d: Vec) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = dot(self.n, tuple(self.c[i] - o[i] for i in range(3))) / dot(self.n, d)
            q = tuple(o[i] + t * d[i] - self.c[i] for i in range(3))
            return _hit(np.where(dot(q, q) <= self.r * self.r, t, np.nan))

    def normal(self, p: Vec) -> Vec:
        return tuple(_full(p, c) for c in self.n)

    def bounds(self) -> np.ndarray | None:
        return _ball_bounds(self.c, self.r)

