"""Augmented views to batches: stacked on the worker as uint8, made float on the device."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from dp_train.data.augment import View
from dp_train.shards import Sample

def collate(views: list[View], sources: list[int], flags: list[Sample], bad_counts: list[int]) -> dict:
    """Stack views into a batch; images stay uint8 until they reach the device (see `normalize_images`).

    "alpha" (zeros where a sample has none, see "has_alpha") is present only when some sample has one.
    """
    batch = {
        "key": [s.key for s in flags],
        "image": torch.from_numpy(np.stack([np.stack(cv2.split(v.image)) for v in views])),  # HWC -> CHW, fast
        "target": torch.from_numpy(np.stack([v.target for v in views]))[:, None],
        "valid": torch.from_numpy(np.stack([v.valid for v in views]))[:, None],
        "has_alpha": torch.tensor([v.alpha is not None for v in views]),
        "f_px": torch.tensor([v.f_px for v in views], dtype=torch.float32),
        "metric": torch.tensor([s.meta.metric for s in flags]),
        "has_depth": torch.tensor([s.meta.has_depth for s in flags]),
        "disparity": torch.tensor([s.meta.depth_kind == "disparity" for s in flags]),
        "synthetic": torch.tensor([s.meta.synthetic for s in flags]),
        "sparse": torch.tensor([s.meta.sparse for s in flags]),
        "source": torch.tensor(sources, dtype=torch.long),
        "bad_records": torch.tensor(bad_counts, dtype=torch.long),
    }
    if batch["has_alpha"].any():
        size = views[0].image.shape[0]
        alpha = [v.alpha if v.alpha is not None else np.zeros((size, size), np.float32) for v in views]
        batch["alpha"] = torch.from_numpy(np.stack(alpha))[:, None]
    return batch


def normalize_images(batch: dict) -> dict:
    """uint8 images -> float in [-1, 1] (done on the device, after transfer, to move 4x fewer bytes)."""
    if batch["image"].dtype == torch.uint8:
        batch["image"] = batch["image"].float().div_(127.5).sub_(1.0)
    return batch
