"""Size priors: objects, surfaces and cameras whose real-world sizes pin an image's metric scale.

Real photos are consistent with one scale because people, doors, cars, furniture, bricks, tiles,
lane markings and a camera held at eye height have known sizes; a world without them is
consistent with scales several times apart. Every size here is drawn uniformly from its range:

* ``SIZE_PRIORS``: people 1.5-1.9 m tall; doors 2.0-2.1 x 0.8-0.9 m; cars 4.2-4.8 x 1.7-1.9 x
  1.4-1.6 m; chairs with the seat at 0.43-0.48 m; tables 0.72-0.76 m high.
* ``CAMERA_RIGS``: camera height above the ground, hand-held 1.4-1.7 m, on a vehicle 1.2-1.8 m,
  indoors 1.2-1.7 m (a spread of about +-20 % around 1.5 m, not one height).
* Surfaces: standard bricks 215 x 65 mm with 10 mm joints, square floor tiles of 0.3-0.6 m, lanes
  3.0-3.75 m wide with 0.15 m lines dashed 3 m on / 9 m off, storeys 3.0-3.5 m, ceilings 2.4-3.0 m.
"""

from __future__ import annotations

import numpy as np

SIZE_PRIORS: dict[str, dict[str, tuple[float, float]]] = {
    "person": {"height": (1.5, 1.9)},
    "door": {"height": (2.0, 2.1), "width": (0.8, 0.9)},
    "car": {"length": (4.2, 4.8), "width": (1.7, 1.9), "height": (1.4, 1.6)},
    "chair": {"seat": (0.43, 0.48), "width": (0.4, 0.5), "back": (0.8, 1.0)},
    "table": {"height": (0.72, 0.76), "length": (0.8, 1.8), "width": (0.7, 1.0)},
}
"""Metres, per object class and dimension (chair: seat top height, seat width, top of the back)."""
CAMERA_RIGS: dict[str, tuple[float, float]] = {"handheld": (1.4, 1.7), "vehicle": (1.2, 1.8), "indoor": (1.2, 1.7)}
"""Camera height above the ground (m) per rig."""
BRICK_M: tuple[float, float] = (0.215, 0.065)
"""Standard brick face (length, height); with ``JOINT_M`` mortar a course repeats every 0.225 x 0.075 m."""
JOINT_M = 0.01
TILE_SIDES_M: tuple[float, ...] = (0.3, 0.4, 0.45, 0.5, 0.6)
LANE_WIDTH_M: tuple[float, float] = (3.0, 3.75)
LANE_LINE_M = 0.15
LANE_DASH_M: tuple[float, float] = (3.0, 9.0)
"""Lane separators: painted length, then gap."""
STOREY_M: tuple[float, float] = (3.0, 3.5)
CEILING_M: tuple[float, float] = (2.4, 3.0)


def draw_size(rng: np.random.Generator, kind: str) -> dict[str, float]:
    """One object's dimensions (m), each uniform in its ``SIZE_PRIORS`` range."""
    return {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in SIZE_PRIORS[kind].items()}


def camera_height(rng: np.random.Generator, rig: str) -> float:
    """Camera height (m), uniform in the rig's ``CAMERA_RIGS`` range."""
    return float(rng.uniform(*CAMERA_RIGS[rig]))
