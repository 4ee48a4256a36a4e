"""The real-like look of the procedural world (dp_train/synth/sensor.py): the same scene through a camera and a
depth sensor, flagged real, deterministic per seed, selectable in the shard writer and `dp_train synth`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dp_train.shards import decode_sample, shard_urls
from dp_train.data.health import SourceHealth
from dp_train.data.sources import raw_records
from dp_train.synth import render_scene, write_synthetic_shards

from dp_train.synth.command import main as synth

SIZE = (96, 128)
SEEDS = (3, 11, 42)


def test_real_look_is_deterministic_per_seed_and_seeds_differ():
    a, b, c = (render_scene(s, SIZE, look="real") for s in (7, 7, 8))
    for name in ("image", "depth", "valid"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.key == b.key != c.key and a.meta == b.meta
    assert not np.array_equal(a.depth, c.depth)


@pytest.mark.parametrize("seed", SEEDS)
def test_real_look_is_a_real_metric_sample_of_the_same_scene(seed):
    """Flagged real (trimmed MAE, no gradient loss in stage 1), metric, dense; same focal length and framing."""
    exact, real = render_scene(seed, SIZE), render_scene(seed, SIZE, look="real")
    real.validate()
    assert real.meta.metric and not real.meta.synthetic and not real.meta.sparse
    assert real.meta.f_px == exact.meta.f_px and real.image.shape == exact.image.shape
    assert real.alpha is None and real.key != exact.key  # a sensor gives no matte; both looks can share a run
    assert not np.array_equal(real.image, exact.image)


@pytest.mark.parametrize("seed", SEEDS)
def test_sensor_depth_is_the_exact_depth_holed_limited_and_noisy(seed):
    """Valid pixels are a strict subset of the exact ones, within the range limit (40 m at most), and each
    deviates from the exact depth by less than 6 sigma of the largest noise the sensor draws (3e-3 * z^2)."""
    exact, real = render_scene(seed, SIZE), render_scene(seed, SIZE, look="real")
    assert np.array_equal(real.valid, real.depth > 0)
    assert not (real.valid & ~exact.valid).any()
    assert real.valid.sum() < exact.valid.sum()
    z, d = exact.depth[real.valid].astype(np.float64), real.depth[real.valid].astype(np.float64)
    assert z.max() <= 40.0
    assert (np.abs(d - z) <= 6 * 3e-3 * z**2 + 1e-6 * z).all()
    assert (d != z).mean() > 0.9  # noise on (nearly) every pixel


def test_shards_of_the_real_look_decode_with_their_flags(tmp_path):
    index = write_synthetic_shards(tmp_path, "real", 2, SIZE, seed=5, progress=False, look="real")
    samples = [decode_sample(raw) for raw in _records(index)]
    assert [s.key for s in samples] == ["real-0000000005", "real-0000000006"]
    assert all(not s.meta.synthetic and s.meta.metric for s in samples)


def test_synth_scenes_look_option(tmp_path):
    assert synth(["--out", str(tmp_path), "--count", "1", "--size", "64", "--look", "real", "--quiet"]) == 0
    (raw,) = _records(tmp_path / "synth.index.json")
    assert not decode_sample(raw).meta.synthetic
    with pytest.raises(SystemExit):
        synth(["--out", str(tmp_path), "--count", "1", "--look", "photo"])


def test_an_unknown_look_is_refused():
    with pytest.raises(ValueError, match="look must be one of"):
        render_scene(1, SIZE, look="photo")


def _records(index: Path) -> list[dict]:
    """Every raw record of a shard set, in order."""
    return list(raw_records(shard_urls(index), 1, 0, SourceHealth(index.name, max_bad_fraction=0.0, min_records=1)))
