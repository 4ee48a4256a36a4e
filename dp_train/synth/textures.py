"""Surface patterns of the procedural world: noise, checker, stripes, bricks, tiles, windows, lane markings.

Bricks and lane markings follow the standard sizes in ``priors``."""

from __future__ import annotations

import functools

import numpy as np

from dp_train.synth.geometry import Vec
from dp_train.synth.priors import BRICK_M, JOINT_M, LANE_DASH_M, LANE_LINE_M

PLAIN, CHECKER, STRIPES, BRICKS, GROUND, TILES, WINDOWS, LANES = range(8)
PATTERN_MEAN = {PLAIN: 0.5, CHECKER: 0.5, STRIPES: 0.5, BRICKS: 0.2, GROUND: 0.5, TILES: 0.45, WINDOWS: 0.35, LANES: 0.2}

@functools.lru_cache(maxsize=1)
def _noise_texture(n: int = 128) -> np.ndarray:
    """A fixed periodic smooth noise texture (n x n, zero mean, unit std, features ~8 texels)."""
    rng = np.random.default_rng(20240917)
    k = np.fft.fftfreq(n) * n
    radius = np.hypot(k[:, None], k[None, :])
    spectrum = np.fft.fft2(rng.standard_normal((n, n))) / (1.0 + (radius / 12.0) ** 3)
    tex = np.real(np.fft.ifft2(spectrum))
    return (tex - tex.mean()) / tex.std()


def _noise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of the periodic noise texture; one unit of x or y is about one feature."""
    tex = _noise_texture()
    n = tex.shape[0]
    flat = tex.ravel()
    x, y = x * 8.0, y * 8.0
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    ix, iy = x0.astype(np.int64) & (n - 1), (y0.astype(np.int64) & (n - 1)) * n
    ix1, iy1 = (ix + 1) & (n - 1), (iy + n) & (n * n - 1)
    a, b = flat.take(iy + ix), flat.take(iy + ix1)
    c, d = flat.take(iy1 + ix), flat.take(iy1 + ix1)
    top = a + (b - a) * fx
    return top + (c + (d - c) * fx - top) * fy


def fbm(x: np.ndarray, y: np.ndarray, octaves: int = 2) -> np.ndarray:
    """A few octaves of noise, roughly unit std."""
    total, amp = _noise(x, y), 0.5
    for k in range(1, octaves):
        total = total + amp * _noise(x * 2.03**k + 5.2 * k, y * 2.03**k + 1.7 * k)
        amp *= 0.5
    return total / (1.0 + 0.25 * (octaves > 1) + 0.06 * (octaves > 2))


def _hash2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (a, b)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h >> 8) & 0xFFFF) / 65536.0


def _frac(x: np.ndarray) -> np.ndarray:
    """Fractional part, in [0, 1) also for negative x."""
    return x - np.floor(x)


def pattern(kind: int, p: Vec, uv: tuple[np.ndarray, np.ndarray], s: np.ndarray) -> np.ndarray:
    """Mix weight in [0, 1] between a material's c1 (0) and c2 (1) at world points p.

    ``uv`` are surface coordinates (the two world axes closest to the surface's tangent plane).
    """
    x, y, z = p
    if kind == PLAIN:
        return np.clip(0.5 + 0.4 * fbm(uv[0] * s, uv[1] * s), 0.0, 1.0)
    if kind == CHECKER:
        return (np.floor(x * s + 0.13) + np.floor(y * s + 0.27) + np.floor(z * s + 0.41)) % 2
    if kind == STRIPES:
        return np.floor(y * s + 0.37) % 2
    if kind == BRICKS:  # s = 1 / course length: a brick plus a joint
        course = BRICK_M[0] + JOINT_M
        rows = y * s * course / (BRICK_M[1] + JOINT_M)
        row = np.floor(rows)
        u = (x + z) * s + 0.5 * row
        mortar = (_frac(u) < JOINT_M / course) | (_frac(rows) < JOINT_M / (BRICK_M[1] + JOINT_M))
        return np.where(mortar, 1.0, 0.3 * _hash2(row, np.floor(u)))
    if kind == GROUND:
        m = np.clip(0.5 + 0.6 * fbm(uv[0] * s, uv[1] * s, 3), 0.0, 1.0)
        return m * m * (3.0 - 2.0 * m)
    if kind == TILES:
        u, v = x * s, z * s
        grout = (_frac(u) < 0.05) | (_frac(v) < 0.05)
        return np.where(grout, 1.0, 0.35 * ((np.floor(u) + np.floor(v)) % 2) + 0.1 * _hash2(np.floor(u), np.floor(v)))
    if kind == WINDOWS:
        u, v = _frac((x + z) * s), _frac(y * s)
        glass = (u > 0.22) & (u < 0.78) & (v > 0.3) & (v < 0.8) & (y > 1.0)
        return np.where(glass, 1.0, 0.1 * _hash2(np.floor((x + z) * s), np.floor(y * s)))
    if kind == LANES:  # s = 1 / lane width: dashed separators between 4 lanes along Z, solid edge lines
        lane = x * s
        on_line = np.abs(_frac(lane) - 0.5) < 0.5 * LANE_LINE_M * s
        dashed = _frac(z / (LANE_DASH_M[0] + LANE_DASH_M[1])) < LANE_DASH_M[0] / (LANE_DASH_M[0] + LANE_DASH_M[1])
        paint = on_line & (np.abs(lane) < 3.0) & ((np.abs(lane) > 2.0) | dashed)
        return np.where(paint, 1.0, np.clip(0.15 + 0.1 * fbm(uv[0] * 2.0, uv[1] * 2.0), 0.0, 0.4))
    raise ValueError(f"unknown texture kind {kind}")

