"""Shared test fixtures: reference data location and fast network configurations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dp_train.model import DepthProConfig
from tests.helpers.paths import FIXTURES



@pytest.fixture
def fixtures_dir() -> Path:
    """The reference fixture folder; fails loudly if the checkout has no ../shared beside it."""
    assert FIXTURES.is_dir(), f"reference fixtures missing: {FIXTURES}"
    return FIXTURES


@pytest.fixture
def fast_cfg() -> DepthProConfig:
    """The tiny preset at a 128 px ViT input: a 512x512 network that runs in well under a second."""
    return DepthProConfig.preset("tiny", vit_img_size=128)


@pytest.fixture(autouse=True)
def _deterministic_seed() -> None:
    """Every test starts from the same RNG state."""
    torch.manual_seed(0)
