"""The procedural world: scenes with exact metric depth, a known focal length and real-world scale cues.

The project's own data for tests, the quick start and learning checks: every scene is ray cast
analytically (numpy, all pixels at once), so depth is exact and the focal length is known.

* Camera (``world``): pinhole, horizontal FOV uniform in [30, 100] degrees
  (``f_px = 0.5 * W / tan(fov / 2)``), principal point at the image centre (pixel centres at
  integer coordinates, ``cx = (W - 1) / 2``), small random pitch (-12..6 deg) and roll (+-5 deg).
  Its height comes from the prior of the scene's rig (``priors.CAMERA_RIGS``): hand-held
  1.4-1.7 m, vehicle 1.2-1.8 m, indoor 1.2-1.7 m.
* Content: a textured ground plane (a road with standard lane markings for the vehicle rig), walls
  (and a ceiling 2.4-3.0 m high indoors), standard bricks, floor tiles and storeys; objects of
  known size (``objects``: people, doors, cars, chairs, tables) next to boxes, spheres, buildings
  and hills of any size (``builder``); many thin structures with sharp depth boundaries (``thin``):
  poles, sagging wires, fences and railings, trees and bushes of many small spheres and leaf discs,
  and (``objects``) chair and table legs.
* Shading (``render``): Lambertian with a random sun, hemisphere ambient, ground shadows, distance
  haze, sky gradient with clouds, mild sensor noise.
* Depth: float32 z-depth along the optical axis in metres (not ray length); sky and anything
  beyond ``FAR_M`` is invalid (0).
* Looks (``world.LOOKS``): ``"synthetic"`` is the renderer's own output; ``"real"`` takes it through a
  camera and a depth sensor (``sensor``: exposure, blur, noise, JPEG; range-limited, noisy, holed depth)
  and flags the sample real - the two kinds of data of the paper's curriculum, from one world.
* Alpha: 1 on one foreground object group (a tree, a fence, a pole line, the nearest object ...),
  0 elsewhere - a hard matte for boundary recall.

Same seed -> bit-identical arrays (all randomness from ``np.random.default_rng(seed)``).
``tools/bench_scale_cues.py`` prints the render speed and how much metric scale an image carries.
"""

from dp_train.synth.geometry import FAR_M, Box, Camera, Cylinder, Disc, Plane, Sphere
from dp_train.synth.render import Render, render
from dp_train.synth.scene import Material, Scene, ground_scene
from dp_train.synth.world import (
    DEFAULT_SIZE,
    FOV_RANGE_DEG,
    LOOKS,
    SKY_PROB,
    example_panel,
    make_scene,
    render_scene,
    save_examples,
    write_synthetic_shards,
)

__all__ = [
    "DEFAULT_SIZE", "FAR_M", "FOV_RANGE_DEG", "LOOKS", "SKY_PROB", "Box", "Camera", "Cylinder", "Disc", "Material", "Plane",
    "Render", "Scene", "Sphere", "example_panel", "ground_scene", "make_scene", "render", "render_scene",
    "save_examples", "write_synthetic_shards",
]
