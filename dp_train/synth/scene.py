"""What the renderer draws: materials, objects with their foreground groups, camera and lighting."""

from __future__ import annotations

from dataclasses import dataclass, field

from dp_train.synth.geometry import Camera, Plane, Primitive
from dp_train.synth.textures import GROUND, PLAIN

@dataclass(frozen=True)
class Material:
    """Albedo pattern: mix of display-space colours c1 and c2 by a pattern of ``scale`` cycles per metre."""

    c1: tuple[float, float, float]
    c2: tuple[float, float, float]
    kind: int = PLAIN
    scale: float = 1.0
    noise: float = 0.1


@dataclass
class Scene:
    """Everything ``render`` needs.

    Object i is ``prims[i]`` with ``materials[i]``, in foreground group ``groups[i]`` (-1: background such
    as ground, walls, hills; groups are what the alpha matte selects). Object 0 must be the ground: only it
    receives shadows. ``sun`` is the unit vector towards the sun; colours are display-space RGB in [0, 1];
    ``sky`` records whether the scene is open and ``rig`` the camera rig whose height prior placed the camera
    (informational); ``seed`` drives the sensor noise and
    ``alpha_pick`` in [0, 1) which group gets the matte.
    """

    camera: Camera
    prims: list[Primitive] = field(default_factory=list)
    materials: list[Material] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    casts_shadow: list[bool] = field(default_factory=list)
    bounds: list = field(default_factory=list)  # (2, 3) AABB per object, None when unbounded
    thin_groups: set[int] = field(default_factory=set)
    sky: bool = True
    rig: str = ""
    sun: tuple[float, float, float] = (0.3, 0.8, -0.5)
    sun_colour: tuple[float, float, float] = (1.0, 0.95, 0.85)
    ambient: float = 0.35
    sky_zenith: tuple[float, float, float] = (0.25, 0.45, 0.85)
    sky_horizon: tuple[float, float, float] = (0.75, 0.82, 0.92)
    cloudiness: float = 0.3
    fog_m: float = 200.0
    noise_sigma: float = 1.5 / 255.0
    seed: int = 0
    alpha_pick: float = 0.5
    next_group: int = 0

    def add(self, prim: Primitive, material: Material, group: int = -1, casts_shadow: bool = True) -> None:
        """Append one object."""
        self.prims.append(prim)
        self.materials.append(material)
        self.groups.append(group)
        self.casts_shadow.append(casts_shadow)
        self.bounds.append(prim.bounds())

    def new_group(self, thin: bool = False) -> int:
        """A fresh foreground group id (thin: a structure made of thin parts)."""
        g = self.next_group
        self.next_group += 1
        if thin:
            self.thin_groups.add(g)
        return g


def ground_scene(camera: Camera, sky: bool = True) -> Scene:
    """A scene holding only a textured ground plane (Y = 0): the analytic reference case."""
    scene = Scene(camera=camera, sky=sky)
    scene.add(Plane((0.0, 1.0, 0.0), 0.0), Material((0.35, 0.5, 0.2), (0.45, 0.4, 0.25), GROUND, 0.3, 0.15), -1, False)
    return scene

