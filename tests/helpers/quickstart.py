"""The network recipes/quickstart.yaml trains, for tests that build, save or load one of its shape."""

from __future__ import annotations

from pathlib import Path

import yaml

from dp_train.model import DepthProConfig

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


def quickstart_config() -> DepthProConfig:
    """The quick start's network shape (its `model.preset` and `model.network`), read from the recipe so that
    tests follow the recipe when its network changes."""
    model = yaml.safe_load(QUICKSTART.read_text())["model"]
    network = {k: tuple(v) if isinstance(v, list) else v for k, v in model["network"].items()}
    return DepthProConfig.preset(model["preset"], **network)
