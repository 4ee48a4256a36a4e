"""What the `predict` tests share: the tiny test network with a positive depth output and a constant FOV head,
and random images with a gradient."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dp_train.model import DepthProConfig, build_depth_pro

FOV_DEG = 60.0


def tiny_model(fov_head: bool = True) -> torch.nn.Module:
    """The test network with a positive depth output and, if present, a constant 60 degree FOV head."""
    torch.manual_seed(0)
    model = build_depth_pro(DepthProConfig.preset("tiny", vit_img_size=128, fov_head=fov_head))
    with torch.no_grad():
        last = model.head[4]  # conv before the final ReLU: keep canonical inverse depth well above zero
        last.weight.mul_(0.01)
        last.bias.fill_(1.0)
        if model.fov is not None:
            model.fov.head[-1].weight.zero_()
            model.fov.head[-1].bias.fill_(FOV_DEG)
    return model


def random_image(width: int, height: int, seed: int) -> Image.Image:
    """A random RGB image with a horizontal gradient."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return Image.fromarray(pixels)


def summary_rows(output: Path) -> dict[str, dict]:
    """summary.json rows keyed by input file name (also checks summary.csv has the same inputs)."""
    rows = json.loads((output / "summary.json").read_text())["images"]
    with open(output / "summary.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["input"] for r in csv_rows] == [r["input"] for r in rows]
    return {Path(r["input"]).name: r for r in rows}
