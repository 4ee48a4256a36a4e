"""Ray casting a Scene: exact z-depth, shaded image with shadows and haze, object ids and an alpha matte.

Each primitive is tested only inside the conservative screen-space box of its bounds (shadow rays
likewise), and pixels are processed in bands of ``BAND_PIXELS`` so numpy temporaries stay small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dp_train.synth.geometry import FAR_M, NEAR_M, Vec, dot
from dp_train.synth.scene import Material, Scene
from dp_train.synth.textures import PATTERN_MEAN, fbm, pattern

BAND_PIXELS = 8192
"""Largest block of pixels processed at once (small temporaries are much faster than big ones)."""

@dataclass
class Render:
    """Raw render: image (H, W, 3) uint8, depth (H, W) float32 z-depth (0 = invalid),
    alpha (H, W) float32 in {0, 1}, ids (H, W) int32 object index (-1 = sky)."""

    image: np.ndarray
    depth: np.ndarray
    alpha: np.ndarray
    ids: np.ndarray


_CORNER_BITS = np.array([[(k >> i) & 1 for i in range(3)] for k in range(8)], dtype=bool)


def _corners(bounds: np.ndarray) -> np.ndarray:
    """(N, 2, 3) AABBs -> (N, 8, 3) corner points."""
    return np.where(_CORNER_BITS[None], bounds[:, None, 1], bounds[:, None, 0])


def _primary_windows(scene: Scene) -> np.ndarray:
    """Pixel window (v0, v1, u0, u1) per object, full image for unbounded ones."""
    h, w = scene.camera.size
    wins = np.tile(np.array([0, h, 0, w]), (len(scene.prims), 1))
    bounded = [i for i, b in enumerate(scene.bounds) if b is not None]
    if bounded:
        boxes = np.stack([scene.bounds[i] for i in bounded])
        wins[bounded] = scene.camera.windows(_corners(boxes))
    return wins


def _chunks(win: np.ndarray) -> list[tuple[slice, slice]]:
    """Split a pixel window (v0, v1, u0, u1) into row bands of at most BAND_PIXELS pixels.

    Working arrays stay small, which keeps numpy temporaries out of fresh (page-faulting) memory.
    """
    v0, v1, u0, u1 = (int(x) for x in win)
    if v0 >= v1 or u0 >= u1:
        return []
    step = max(1, BAND_PIXELS // (u1 - u0))
    return [(slice(r, min(r + step, v1)), slice(u0, u1)) for r in range(v0, v1, step)]


def _cast(scene: Scene, o: Vec, d: Vec) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Nearest hit per pixel: z-depth t (inf = miss), object index (-1 = miss), normal components."""
    h, w = scene.camera.size
    t = np.full((h, w), np.inf)
    ids = np.full((h, w), -1, dtype=np.int32)
    n = [np.zeros((h, w)) for _ in range(3)]
    for i, (prim, win) in enumerate(zip(scene.prims, _primary_windows(scene))):
        for sl in _chunks(win):
            dw = tuple(c[sl] for c in d)
            tn = prim.intersect(o, dw)
            tw = t[sl]
            hit = tn < tw
            if not hit.any():
                continue
            th = tn[hit]
            tw[hit] = th
            ids[sl][hit] = i
            for k, c in enumerate(prim.normal(tuple(o[j] + th * dw[j][hit] for j in range(3)))):
                n[k][sl][hit] = c
    return t, ids, n


def _shadow_windows(scene: Scene, bounds: np.ndarray) -> np.ndarray:
    """Pixel windows holding the ground shadows of N casters with AABBs (N, 2, 3).

    A shadow lies inside the ground rectangle spanned by the caster's corners pushed down
    along the sun direction; the rectangle is clipped to the ground in front of the camera.
    """
    cam, sun = scene.camera, np.asarray(scene.sun)
    corners = _corners(bounds)
    ground = corners - np.maximum(corners[..., 1:2], 0.0) / sun[1] * sun
    lo, hi = ground.min(axis=1), ground.max(axis=1)
    z_front = (2 * NEAR_M + cam.height * math.sin(cam.pitch)) / math.cos(cam.pitch)
    lo[:, 2] = np.maximum(lo[:, 2], z_front)
    rect = np.stack([np.stack([lo[:, 0], lo[:, 0], hi[:, 0], hi[:, 0]], 1), np.zeros((len(lo), 4)),
                     np.stack([lo[:, 2], hi[:, 2], lo[:, 2], hi[:, 2]], 1)], axis=-1)
    wins = cam.windows(rect)
    wins[hi[:, 2] <= lo[:, 2]] = 0
    return wins


def _shadows(scene: Scene, p: Vec, receivers: np.ndarray) -> np.ndarray:
    """Receiver pixels (ground) from which the sun is blocked by a shadow-casting object."""
    shadow = np.zeros(receivers.shape, dtype=bool)
    casters = [i for i, c in enumerate(scene.casts_shadow) if c and scene.bounds[i] is not None]
    if not casters or not receivers.any():
        return shadow
    wins = _shadow_windows(scene, np.stack([scene.bounds[i] for i in casters]))
    for i, win in zip(casters, wins):
        for sl in _chunks(win):
            m = receivers[sl] & ~shadow[sl]
            if m.any():
                o = (p[0][sl][m], p[1][sl][m] + 1e-4, p[2][sl][m])
                shadow[sl][m] = np.isfinite(scene.prims[i].intersect(o, scene.sun))
    return shadow


def _material_table(scene: Scene) -> dict[str, np.ndarray]:
    """Per-object material arrays indexed by object id; a last dummy row serves id -1 (sky)."""
    mats = [*scene.materials, Material((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))]
    return {
        "c1": np.array([m.c1 for m in mats]).T.copy(),
        "c2": np.array([m.c2 for m in mats]).T.copy(),
        "kind": np.array([m.kind for m in mats]),
        "scale": np.array([m.scale for m in mats]),
        "noise": np.array([m.noise for m in mats]),
    }


def _surface_uv(p: Vec, n: Vec) -> tuple[np.ndarray, np.ndarray]:
    """Texture coordinates: the world axes spanning the axis plane closest to the surface (no stretching)."""
    ax, ay, az = (np.abs(c) for c in n)
    flat = ay >= np.maximum(ax, az)
    side = ax > az
    return np.where(flat | ~side, p[0], p[2]), np.where(flat, p[2], p[1])


def _albedo(tab: dict[str, np.ndarray], ids: np.ndarray, p: Vec, n: Vec, footprint: np.ndarray) -> list[np.ndarray]:
    """Display-space albedo channels per pixel; patterns fade where a pixel covers a whole period."""
    kind, s = tab["kind"].take(ids), tab["scale"].take(ids)
    uv = _surface_uv(p, n)
    m, mean = np.zeros(ids.shape), np.zeros(ids.shape)
    for kv in np.unique(kind):
        sel = kind == kv
        m = np.where(sel, pattern(int(kv), p, uv, s), m)
        mean[sel] = PATTERN_MEAN[int(kv)]
    m = mean + (m - mean) * np.clip(1.5 - 2.0 * footprint * s, 0.0, 1.0)
    grain = fbm(uv[0] * 7.0, uv[1] * 7.0) * np.clip(1.2 - footprint * 10.0, 0.0, 1.0)
    gain = 1.0 + tab["noise"].take(ids) * grain
    out = []
    for k in range(3):
        c1, c2 = tab["c1"][k].take(ids), tab["c2"][k].take(ids)
        out.append(np.clip((c1 + (c2 - c1) * m) * gain, 0.0, 1.0))
    return out


def _sky_colour(scene: Scene, d: Vec) -> list[np.ndarray]:
    """Linear sky colour channels for ray directions: gradient, sun glow, clouds."""
    length = np.sqrt(dot(d, d))
    e = d[1] / length
    g = np.sqrt(np.clip(e, 0.0, 1.0))
    cos_sun = dot(d, scene.sun) / length
    glow = 0.3 * np.exp((cos_sun - 1.0) * 30.0) + 3.0 * (cos_sun > 0.9993)
    up = np.maximum(d[1], 1e-3)
    cloud = fbm(d[0] / up * 0.35 + 3.0, d[2] / up * 0.35, 3)
    cover = np.clip(((0.5 + 0.35 * cloud) - (1.0 - scene.cloudiness)) * 2.0, 0.0, 1.0) * np.clip(e * 10.0, 0.0, 1.0)
    out = []
    for k in range(3):
        horizon, zenith = scene.sky_horizon[k] ** 2, scene.sky_zenith[k] ** 2
        col = horizon + (zenith - horizon) * g + scene.sun_colour[k] * glow
        out.append(col + (0.85 - col) * cover)
    return out


def _shade(scene: Scene, tab: dict[str, np.ndarray], ids: np.ndarray, t: np.ndarray, n: Vec, d: Vec, shadow: np.ndarray) -> list[np.ndarray]:
    """Linear colour channels of hit pixels: Lambert sun + hemisphere ambient, then distance haze."""
    length = np.sqrt(dot(d, d))
    facing = dot(n, d)
    flip = np.where(facing > 0, -1.0, 1.0)
    n = tuple(c * flip for c in n)
    p = tuple(scene.camera.position[i] + t * d[i] for i in range(3))
    footprint = t * length / (scene.camera.f_px * np.maximum(np.abs(facing) / length, 0.15))
    albedo = _albedo(tab, ids, p, n, footprint)
    sun = np.maximum(dot(n, scene.sun), 0.0) * np.where(shadow, 0.15, 1.0)
    sky_light = scene.ambient * (0.7 + 0.3 * n[1])
    haze = 1.0 - np.exp(-t * length / scene.fog_m)
    out = []
    for k in range(3):
        sky = scene.sky_horizon[k] ** 2
        col = albedo[k] * albedo[k] * (scene.sun_colour[k] * sun + sky_light * (0.5 + sky))
        out.append(col + (sky - col) * haze)
    return out


def _alpha(scene: Scene, ids: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Hard matte of one foreground group: a thin structure (when alpha_pick < 0.5 and one is visible) or the nearest."""
    groups = np.append(np.asarray(scene.groups, dtype=np.int64), -1).take(ids)
    fg = groups >= 0
    if not fg.any():
        return np.zeros(ids.shape, dtype=np.float32)
    counts = np.bincount(groups[fg])
    mean_depth = np.bincount(groups[fg], weights=t[fg]) / np.maximum(counts, 1)
    cand = np.flatnonzero((counts >= max(16, 0.002 * ids.size)) & (counts <= 0.5 * ids.size))
    if cand.size == 0:
        cand = np.flatnonzero(counts)
    thin = [g for g in cand if g in scene.thin_groups]
    if thin and scene.alpha_pick < 0.5:
        pick = thin[int(scene.alpha_pick * 2 * len(thin))]
    else:
        pick = cand[np.argmin(mean_depth[cand])]
    return (groups == pick).astype(np.float32)


def render(scene: Scene) -> Render:
    """Ray cast a scene: exact z-depth, shaded image, object ids and one object's alpha."""
    cam = scene.camera
    h, w = cam.size
    o, d = cam.position, cam.rays()
    t, ids, n = _cast(scene, o, d)
    hit = t <= FAR_M
    ids[~hit] = -1
    tt = np.where(hit, t, FAR_M)
    shadow = _shadows(scene, tuple(o[i] + tt * d[i] for i in range(3)), ids == 0)
    tab = _material_table(scene)
    noise_rng = np.random.default_rng((scene.seed, 7))
    image = np.empty((h, w, 3), dtype=np.uint8)
    for rows, _ in _chunks(np.array([0, h, 0, w])):
        dd = tuple(c[rows] for c in d)
        rgb = _shade(scene, tab, ids[rows], tt[rows], tuple(c[rows] for c in n), dd, shadow[rows])
        if not hit[rows].all():
            rgb = [np.where(hit[rows], c, s) for c, s in zip(rgb, _sky_colour(scene, dd))]
        band = np.sqrt(np.clip(np.stack(rgb, axis=-1), 0.0, 1.0)) * 255.0
        band += noise_rng.standard_normal(band.shape, dtype=np.float32) * (scene.noise_sigma * 255.0)
        image[rows] = np.clip(np.rint(band), 0, 255)
    depth = np.where(hit, t, 0.0).astype(np.float32)
    return Render(image=image, depth=depth, alpha=_alpha(scene, ids, t), ids=ids)

