"""Ground truth at its own resolution, for evaluation as the paper does it (App. C.6).

The network sees every image resized to its fixed input; the paper resizes the
prediction back to the ground truth's resolution before any metric, never the
ground truth. Evaluation batches therefore carry each sample's depth, validity
and matte as stored in the shard, padded to the largest one in the batch:

    gt_depth (B,1,H,W) float32   stored depth (metres for metric samples), 0 in padding
    gt_valid (B,1,H,W) bool      the sample's valid map, False in padding
    gt_size  (B,2) int64         each sample's own (height, width)
    gt_alpha (B,1,H,W) float32   the matte (0 for samples without one; see has_alpha), only when some has one
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dp_train.shards import Sample

__all__ = ["native_truth"]


def _padded(maps: list[np.ndarray | None], shape: tuple[int, int], dtype: np.dtype) -> Tensor:
    """Stack 2-D maps top-left aligned in a zero (False) array of `shape` per map: (B,1,H,W)."""
    out = np.zeros((len(maps), 1, *shape), dtype=dtype)
    for i, array in enumerate(maps):
        if array is not None:
            out[i, 0, : array.shape[0], : array.shape[1]] = array
    return torch.from_numpy(out)


def native_truth(samples: list[Sample]) -> dict[str, Tensor]:
    """The batch entries above for `samples` (decoded, flags applied; nothing resampled)."""
    shape = (max(s.depth.shape[0] for s in samples), max(s.depth.shape[1] for s in samples))
    batch = {
        "gt_depth": _padded([s.depth for s in samples], shape, np.float32),
        "gt_valid": _padded([s.valid for s in samples], shape, np.bool_),
        "gt_size": torch.tensor([s.depth.shape for s in samples], dtype=torch.long),
    }
    if any(s.alpha is not None for s in samples):
        batch["gt_alpha"] = _padded([s.alpha for s in samples], shape, np.float32)
    return batch
