"""Random scenes of the procedural world, rendered as Samples, written as shards or example panels."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from dp_train.shards import Sample, SampleMeta, ShardWriter
from dp_train.synth.builder import lighting
from dp_train.synth.geometry import Camera
from dp_train.synth.objects import ObjectBuilder
from dp_train.synth.priors import camera_height
from dp_train.synth.render import render
from dp_train.synth.scene import Scene
from dp_train.synth.sensor import real_look

DEFAULT_SIZE: tuple[int, int] = (256, 256)
FOV_RANGE_DEG: tuple[float, float] = (30.0, 100.0)
SKY_PROB = 0.6
"""Chance of an open-sky outdoor scene when ``sky=None``."""
LOOKS = ("synthetic", "real")
"""How a scene is rendered: the renderer's own (exact, synthetic) or through a real camera and depth sensor
(``sensor.real_look``: samples flagged real)."""

CONTENT: dict[str, dict[str, tuple[int, int]]] = {
    "indoor": {"box": (1, 4), "sphere": (0, 2), "lamp": (1, 3), "bush": (0, 2), "fence": (0, 1), "table": (0, 3),
               "chair": (0, 4), "person": (0, 3), "door": (1, 3), "overhead_wires": (0, 1), "pole_line": (0, 2)},
    "courtyard": {"box": (0, 3), "sphere": (0, 2), "bush": (0, 3), "fence": (0, 3), "tree": (0, 3), "table": (0, 2),
                  "person": (1, 5), "car": (0, 3), "door": (1, 4), "overhead_wires": (0, 2), "pole_line": (0, 3)},
    "park": {"box": (0, 3), "sphere": (0, 2), "lamp": (0, 1), "bush": (0, 3), "fence": (0, 3), "tree": (0, 4),
             "table": (0, 2), "person": (1, 5), "car": (0, 3), "overhead_wires": (0, 2), "pole_line": (0, 3)},
    "street": {"box": (0, 2), "sphere": (0, 1), "bush": (0, 2), "fence": (0, 2), "tree": (0, 4), "person": (0, 4),
               "traffic": (1, 6), "overhead_wires": (0, 3), "pole_line": (1, 3)},
}
"""How many of each thing (``integers(lo, hi)``, hi exclusive) a scene of each kind gets, in this order."""
RIGS = {"indoor": "indoor", "courtyard": "handheld", "park": "handheld", "street": "vehicle"}
"""The camera rig (``priors.CAMERA_RIGS``) of each kind of scene."""
INDOOR_PROB = 0.4
"""Chance that a closed scene is a room rather than a courtyard."""
STREET_PROB = 0.5
"""Chance that an open scene is a street seen from a vehicle rather than a park seen by hand."""


def _sample_camera(rng: np.random.Generator, size: tuple[int, int], sky: bool, rig: str) -> Camera:
    """FOV uniform in FOV_RANGE_DEG, height from the rig's prior, small pitch and roll; with sky the horizon stays in view."""
    h, w = size
    f = 0.5 * w / math.tan(math.radians(rng.uniform(*FOV_RANGE_DEG)) / 2.0)
    height = camera_height(rng, rig)
    pitch, roll = rng.uniform(-12.0, 6.0), rng.uniform(-5.0, 5.0)
    if sky:
        pitch = max(pitch, -0.5 * math.degrees(math.atan(0.5 * h / f)))
    return Camera((int(h), int(w)), float(f), float(height), math.radians(pitch), math.radians(roll))


def make_scene(seed: int, size: tuple[int, int] = DEFAULT_SIZE, sky: bool | None = None) -> Scene:
    """A random scene: camera, lighting, ground, walls or sky backdrop, objects and thin structures.

    ``sky=True``: open street or park with sky (invalid depth) in view; ``False``: closed
    courtyard or room, every pixel valid; ``None``: open with probability ``SKY_PROB``.
    """
    rng = np.random.default_rng(seed)
    drawn = rng.random() < SKY_PROB
    sky = drawn if sky is None else bool(sky)
    if sky:
        kind = "street" if rng.random() < STREET_PROB else "park"
    else:
        kind = "indoor" if rng.random() < INDOOR_PROB else "courtyard"
    indoor = kind == "indoor"
    scene = Scene(camera=_sample_camera(rng, size, sky, RIGS[kind]), sky=sky, seed=int(seed),
                  alpha_pick=float(rng.random()), rig=RIGS[kind])
    lighting(scene, rng, indoor)
    b = ObjectBuilder(scene, rng)
    b.ground(indoor, road=kind == "street")
    if sky:
        b.backdrop()
    else:
        b.walls(indoor)
    for name, (lo, hi) in CONTENT[kind].items():
        make = functools.partial(b.pole_line, indoor) if name == "pole_line" else getattr(b, name)
        for _ in range(int(rng.integers(lo, hi))):
            make()
    return scene


def render_scene(seed: int, size: tuple[int, int] = DEFAULT_SIZE, sky: bool | None = None,
                 look: str = "synthetic") -> Sample:
    """Render the scene of ``seed`` at ``size`` = (H, W) as a metric Sample: synthetic (with alpha), or with
    ``look="real"`` through ``sensor.real_look`` (camera effects, sensor depth, flagged real)."""
    if look not in LOOKS:
        raise ValueError(f"look must be one of {LOOKS}, got {look!r}")
    scene = make_scene(seed, size, sky)
    out = render(scene)
    meta = SampleMeta(dataset="synth", f_px=float(scene.camera.f_px), metric=True, synthetic=True)
    sample = Sample(key=f"synth-{int(seed):010d}", image=out.image, depth=out.depth, valid=out.depth > 0,
                    meta=meta, alpha=out.alpha)
    return real_look(sample, seed) if look == "real" else sample


# --------------------------------------------------------------------------- shards and examples


def _scene_sky(scene_seed: int, sky_prob: float | None) -> bool | None:
    """Per-scene sky choice: None leaves it to the scene; otherwise a draw with probability sky_prob."""
    if sky_prob is None:
        return None
    return bool(np.random.default_rng((int(scene_seed), 0x5C1)).random() < sky_prob)


def write_synthetic_shards(out_dir: str | Path, prefix: str, count: int, size: tuple[int, int] = DEFAULT_SIZE,
                           seed: int = 0, samples_per_shard: int = 1000, sky_prob: float | None = None,
                           depth_format: str = "npy16", image_format: str = "jpg", progress: bool = True,
                           look: str = "synthetic") -> Path:
    """Render scenes ``seed .. seed + count - 1`` into WebDataset shards; returns the index file path.

    ``sky_prob``: chance of an open-sky scene (None: the renderer's own ``SKY_PROB`` draw).
    ``look``: one of ``LOOKS`` (``"real"``: camera and depth-sensor effects, samples flagged real).
    ``depth_format`` / ``image_format`` are passed to ``ShardWriter`` ("png16" depth keeps shards small).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out_dir, prefix, max_samples=samples_per_shard, depth_format=depth_format,
                     image_format=image_format) as writer:
        for i in tqdm(range(count), desc=f"synth {prefix}", unit="scene", disable=not progress):
            writer.write(render_scene(seed + i, size, _scene_sky(seed + i, sky_prob), look))
    return out_dir / f"{prefix}.index.json"


def example_panel(sample: Sample) -> np.ndarray:
    """(H, 2W, 3) uint8 panel: the image next to its colour-mapped inverse depth (sky = darkest)."""
    from dp_train.utils.visualize import colorize_inverse_depth

    return np.concatenate([sample.image, colorize_inverse_depth(sample.depth)], axis=1)


def save_examples(out_dir: str | Path, count: int, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0,
                  sky_prob: float | None = None, name: str = "synth", look: str = "synthetic") -> list[Path]:
    """Save the first ``count`` scenes (rendered with ``look``) as PNG panels ``{name}_{i}.png``; returns their paths."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out_dir / f"{name}_{i}.png"
        panel = example_panel(render_scene(seed + i, size, _scene_sky(seed + i, sky_prob), look))
        Image.fromarray(panel).save(path, optimize=True)
        paths.append(path)
    return paths
