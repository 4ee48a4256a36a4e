"""Running `dp_train convert` (tools/convert/convert_public.py's converter) in-process and reading back what it
wrote, for the converter tests: the shards' samples decoded by the schema, the skip list, and a check of one
sample against the source files it came from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds

from dp_train.convert.public import main as convert_public
from dp_train.shards import Sample, decode_sample, shard_urls


def read_jpeg(path: Path) -> np.ndarray:
    """A JPEG decoded by OpenCV, as RGB (the reference for converted JPEG sources)."""
    return cv2.imread(str(path))[..., ::-1]


def run(fmt: str, root: Path, out: Path, *extra: str) -> int:
    """`dp_train convert` in-process, one worker (unless `extra` says otherwise), lossless PNG images."""
    return convert_public([fmt, "--root", str(root), "--out", str(out), "--workers", "1",
                                "--image-format", "png", *extra])


def shards(out: Path, prefix: str) -> dict[str, Sample]:
    """Every sample of the written shards, decoded by the schema."""
    urls = shard_urls(out / f"{prefix}.index.json")
    return {s.key: s for s in map(decode_sample, wds.WebDataset(urls, shardshuffle=False))}


def skip_list(out: Path, prefix: str) -> dict[str, str]:
    """The {prefix}.skipped.txt entries as {name: reason}."""
    return dict(line.split("\t") for line in (out / f"{prefix}.skipped.txt").read_text().splitlines())


def check(sample: Sample, image: np.ndarray, depth: np.ndarray, f_px: float, flags: tuple[bool, bool, bool],
          image_atol: int = 0) -> None:
    """Image (exact unless the source was a JPEG), validity exact, depth to float16 precision,
    f_px and (metric, synthetic, sparse)."""
    np.testing.assert_allclose(sample.image, image, atol=image_atol)
    ok = np.isfinite(depth) & (depth > 0)
    np.testing.assert_array_equal(sample.valid, ok)
    np.testing.assert_allclose(sample.depth[ok], depth[ok], rtol=1e-3)
    assert (sample.meta.metric, sample.meta.synthetic, sample.meta.sparse) == flags
    assert sample.meta.f_px == pytest.approx(f_px)
