"""Small data for the data-stream tests: textured fronto-parallel plane samples, raw tars written around the
schema's checks, and a datamodule at the tests' network input side."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from dp_train.data.datamodule import DepthDataModule
from dp_train.shards import SampleMeta, make_sample

SIZE = 16  # network input side used by these tests


def plane_sample(key: str, depth: float = 4.0, f_px: float = 30.0, height: int = 24, width: int = 32,
                 alpha: bool = False, **meta):
    """A textured fronto-parallel plane at `depth` metres, optionally with a horizontal-ramp matting alpha."""
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    flags = {"dataset": "planes", "f_px": f_px, "metric": True, "synthetic": True} | meta
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1)) if alpha else None
    return make_sample(key, image, np.full((height, width), depth, np.float32), SampleMeta(**flags), alpha=ramp)


def keys_of(batches) -> list[str]:
    """The sample keys of `batches`, in order."""
    return [key for batch in batches for key in batch["key"]]


def datamodule(train=(), val=(), **kwargs) -> DepthDataModule:
    """A datamodule of `train` and `val` sources at SIZE, batch size 2, no workers (`kwargs` override)."""
    settings = dict(image_size=SIZE, batch_size=2, num_workers=0, pin_memory=False) | kwargs
    return DepthDataModule(train_sources=list(train), val_sources=list(val), **settings)


def raw_tar(path: Path, records: list[dict]) -> None:
    """Write records (name suffix -> bytes) straight into a tar, bypassing the schema's checks."""
    with tarfile.open(path, "w") as tar:
        for record in records:
            key = record["__key__"]
            for suffix, data in record.items():
                if suffix.startswith("__"):
                    continue
                data = data if isinstance(data, bytes) else data.encode()
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
