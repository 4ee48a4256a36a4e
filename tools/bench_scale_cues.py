#!/usr/bin/env python
"""How much metric scale a procedural image carries, and how fast scenes render.

Prints, for scenes ``--seed .. --seed + --count - 1`` of the procedural world:

* **render speed**: scenes per second of ``render_scene`` in this process (pin it to one
  core with ``taskset -c 0`` to measure one core);
* **scale floor**: the AbsRel (and delta1) of a predictor that knows each image's
  *relative* depth exactly but not its scale, and uses the dataset prior instead: every
  image is scaled so its median depth equals ``S``, the median over the dataset of the
  images' median depths. Its per-pixel error is ``|S / m_i - 1|`` for image ``i`` with
  median depth ``m_i``, so AbsRel = mean_i ``|S / m_i - 1|``. A world whose images all
  share one scale gives 0; the wider the spread of scale that an image cannot reveal,
  the higher the floor;
* **ground-plane cue**: exact relative depth and the focal length give the ground plane up
  to scale, hence the camera height in relative units; taking the metric height to be the
  dataset's median camera height ``H`` scales image ``i`` by ``H / h_i``, so that floor is
  mean_i ``|H / h_i - 1|`` (assuming the ground is in view, as it nearly always is here);
  and the correlation of ``log m_i`` with ``log h_i`` (how much of the scale spread the
  camera height alone explains).

Run it at two commits to compare worlds; ``--module`` names the module that holds
``make_scene`` and ``render_scene`` (``dp_train.synth``; before issue 14 the world was
``dp_train.data.synth``)::

    taskset -c 0 python tools/bench_scale_cues.py --count 200 --size 96
    PYTHONPATH=/path/to/old/checkout taskset -c 0 python tools/bench_scale_cues.py \\
        --count 200 --size 96 --module dp_train.data.synth
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=200, help="number of scenes (default: 200)")
    p.add_argument("--size", type=int, default=96, help="square image side in pixels (default: 96)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scene (default: 0)")
    p.add_argument("--module", default="dp_train.synth", help="module with make_scene and render_scene")
    return p.parse_args(argv)


def scale_floor(medians: np.ndarray, scales: np.ndarray) -> tuple[float, float]:
    """(AbsRel, delta1) of exact relative depth scaled to predicted medians ``scales`` instead of ``medians``."""
    ratio = scales / medians
    return float(np.mean(np.abs(ratio - 1.0))), float(np.mean(np.maximum(ratio, 1.0 / ratio) < 1.25))


def measure(module, seeds: range, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-scene median valid depth and camera height, and the render rate in scenes per second."""
    medians, heights, elapsed = [], [], 0.0
    for seed in seeds:
        start = time.perf_counter()
        sample = module.render_scene(seed, size)
        elapsed += time.perf_counter() - start
        medians.append(float(np.median(sample.depth[sample.valid])))
        heights.append(module.make_scene(seed, size).camera.height)
    return np.array(medians), np.array(heights), len(seeds) / elapsed


def main(argv: list[str] | None = None) -> int:
    """Render the scenes and print the figures."""
    args = parse_args(argv)
    module = importlib.import_module(args.module)
    size = (args.size, args.size)
    medians, heights, rate = measure(module, range(args.seed, args.seed + args.count), size)
    prior = float(np.median(medians))
    floor, delta1 = scale_floor(medians, np.full_like(medians, prior))
    log_m, log_h = np.log(medians), np.log(heights)
    h_floor, h_delta1 = scale_floor(heights, np.full_like(heights, np.median(heights)))
    print(f"world: {module.__name__} ({module.__file__})")
    print(f"scenes: {args.count} (seeds {args.seed}..{args.seed + args.count - 1}) at {args.size}x{args.size}")
    print(f"render speed: {rate:.1f} scenes/s")
    print(f"median depth per image: median {prior:.2f} m, 10-90 %: {np.percentile(medians, 10):.2f}-"
          f"{np.percentile(medians, 90):.2f} m, sd of log {np.std(log_m):.3f}")
    print(f"scale floor (dataset prior): AbsRel {floor:.3f}, delta1 {delta1:.3f}")
    print(f"camera height: {heights.min():.2f}-{heights.max():.2f} m, corr(log median depth, log height) "
          f"{np.corrcoef(log_m, log_h)[0, 1]:.3f}")
    print(f"scale floor (ground plane at the median camera height {np.median(heights):.2f} m): AbsRel {h_floor:.3f}, "
          f"delta1 {h_delta1:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
