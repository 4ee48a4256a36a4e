"""Reader for the matting / boundary sets without depth (DIS5K and friends): an image and its alpha matte,
stored with an all-invalid depth map for the boundary-recall metrics.

The `find_<format>` / `load_<format>` contract: dp_train/convert/formats.py; layouts: docs/convert.md.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from dp_train.convert.formats import Item, Loaded, Skipped, require_dir
from dp_train.convert.jobs import count_problem, files_by_stem
from dp_train.convert.readers import IMAGE_EXTS, read_image, read_or_skip
from dp_train.shards import sanitize_key

# ----------------------------------------------------------------------------- DIS5K / matting

_ALPHA_MODES = ("L", "P", "1", "RGB")  # 8-bit modes converted to one gray channel


def read_alpha(path: Path) -> np.ndarray:
    """Read an 8-bit alpha matte or binary mask PNG as HxW float32 in [0, 1] (value / 255)."""
    with Image.open(path) as img:
        if img.mode not in _ALPHA_MODES:
            raise ValueError(f"expected an 8-bit grayscale matte, got mode {img.mode}")
        return np.asarray(img.convert("L"), np.float32) / 255


def load_matting(image: Path, alpha: Path) -> Loaded:
    """One image + alpha matte pair of a boundary set: no depth (every pixel invalid), no focal length."""
    return Loaded(read_or_skip(image, read_image), None, None, alpha=read_or_skip(alpha, read_alpha))


def find_matting(folder: Path, image_dir: str = "im", alpha_dir: str = "gt") -> tuple[list[Item], Skipped]:
    """Boundary sets without depth: images in folder/<image_dir> matched by file stem with
    8-bit .png mattes or masks in folder/<alpha_dir>.

    DIS5K (xuebinqin.github.io/dis): DIS-TR, DIS-VD and DIS-TE1..4, each with im/*.jpg and gt/*.png
    (8-bit, 0 background, 255 object). Stored alpha = value / 255; depth all invalid, no f_px.
    """
    images = files_by_stem(require_dir(folder / image_dir, "image folder"), IMAGE_EXTS)
    alphas = files_by_stem(require_dir(folder / alpha_dir, "alpha folder"), (".png",))
    items: list[Item] = []
    skipped: Skipped = []
    for stem in sorted(images.keys() | alphas.keys()):
        pair = {"image": images.get(stem, []), "alpha": alphas.get(stem, [])}
        reason = next(filter(None, (count_problem(what, files) for what, files in pair.items())), None)
        if reason:
            skipped.append((stem, reason))
        else:
            items.append(Item(sanitize_key(stem), partial(load_matting, pair["image"][0], pair["alpha"][0])))
    return items, skipped
