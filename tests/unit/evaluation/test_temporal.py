"""The temporal-stability metric: known values, pairs formed only between consecutive frames of one clip whatever
order and process the frames came from, invalid and masked pixels left out, pixel flicker not smoothed away."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dp_train.data.samples import apply_flags
from dp_train.data.sources import SourceConfig, clip_and_frame
from dp_train.evaluation.scoring import computed_and_reset, metric_collection, score_batch
from dp_train.evaluation.temporal import GRID, TemporalChange, clip_id
from dp_train.shards import SampleMeta, make_sample


def _frames(*values: float, size: int = 8) -> torch.Tensor:
    """(N, size, size) constant depth maps, one per value."""
    return torch.tensor(values).view(-1, 1, 1).expand(-1, size, size).clone()


def _fed(metric: TemporalChange, depth: torch.Tensor, clips: list[int], frames: list[int]) -> TemporalChange:
    """`metric` after one update with these frames."""
    metric.update(depth, torch.tensor(clips), torch.tensor(frames))
    return metric


def _value(metric: TemporalChange) -> float:
    return float(metric.compute()["temporal_change"])


def test_known_values() -> None:
    metric = _fed(TemporalChange(), _frames(2.0, 3.0, 3.0), [7, 7, 7], [0, 1, 2])
    result = metric.compute()  # pairs: |3 - 2| / 2.5 = 0.4 and 0
    assert float(result["temporal_change"]) == pytest.approx(0.2, rel=1e-6) and int(result["temporal_pairs"]) == 2


def test_frames_in_any_order_on_any_process_give_the_single_ordered_result() -> None:
    depth = _frames(1.0, 1.5, 1.2, 4.0, 5.0)
    clips, frames = [1, 1, 1, 2, 2], [0, 1, 2, 0, 1]
    single = _fed(TemporalChange(), depth, clips, frames)
    first = _fed(TemporalChange(), depth[[4, 1]], [2, 1], [1, 1])  # "rank 0" got frames out of order
    second = _fed(TemporalChange(), depth[[2, 0, 3]], [1, 1, 2], [2, 0, 0])
    first.merge_state(second)  # what torchmetrics' DDP sync does with the list states
    expected = (0.5 / 1.25 + 0.3 / 1.35 + 1.0 / 4.5) / 3
    assert _value(first) == pytest.approx(expected, rel=1e-6) and _value(single) == pytest.approx(expected, rel=1e-6)


def test_a_frame_read_twice_counts_once_and_a_gap_or_another_clip_breaks_the_chain() -> None:
    depth = _frames(1.0, 2.0, 2.0, 9.0, 50.0)
    metric = _fed(TemporalChange(), depth, [3, 3, 3, 3, 4], [0, 1, 1, 3, 4])  # frame 1 twice, frame 2 missing
    result = metric.compute()  # only (0, 1) pairs: not (1, 3) across the gap, not clip 3's frame 3 with clip 4
    assert float(result["temporal_change"]) == pytest.approx(1.0 / 1.5, rel=1e-6)
    assert int(result["temporal_pairs"]) == 1


def test_invalid_and_masked_pixels_are_left_out() -> None:
    depth = _frames(1.0, 1.1, size=GRID)
    depth[1, :, : GRID // 2] = 100.0  # a moving object in the left half
    depth[0, 0, GRID - 1] = math.nan
    depth[1, 1, GRID - 1] = 0.0
    static = torch.zeros(2, GRID, GRID, dtype=torch.bool)
    static[:, :, GRID // 2:] = True
    metric = TemporalChange()
    metric.update(depth, torch.tensor([0, 0]), torch.tensor([0, 1]), mask=static)
    assert _value(metric) == pytest.approx(0.1 / 1.05, rel=1e-6)


def test_pixel_flicker_is_kept_at_any_resolution() -> None:
    # a checkerboard of +-10 % that flips sign each frame: every pixel changes by 0.2 / 1; an averaging
    # downsample would see no change at all
    size = 4 * GRID + 6
    sign = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 * 2 - 1
    depth = torch.stack([1 + 0.1 * sign, 1 - 0.1 * sign]).float()
    assert _value(_fed(TemporalChange(), depth, [0, 0], [0, 1])) == pytest.approx(0.2, rel=1e-6)


def test_no_pair_is_nan_and_clip_ids_are_stable() -> None:
    result = _fed(TemporalChange(), _frames(1.0), [0], [0]).compute()
    assert math.isnan(float(result["temporal_change"])) and int(result["temporal_pairs"]) == 0
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(_value(TemporalChange()))
    assert clip_id("sintel/alley_1") == clip_id("sintel/alley_1") != clip_id("sintel/alley_2")
    assert 0 <= clip_id("x") < 2 ** 63


# ----------------------------------------------------------------------------- a sequence source in `test`


def _validation_batch(keys: list[str], canonical: list[float], source: int = 0) -> dict:
    """A batch as validation during `fit` gives it (ground truth at the network's 4 x 4), one key per image."""
    count = len(keys)
    return {"key": keys, "image": torch.zeros(count, 3, 4, 4), "target": torch.ones(count, 1, 4, 4),
            "valid": torch.ones(count, 1, 4, 4, dtype=torch.bool), "f_px": torch.full((count,), 4.0),
            "metric": torch.ones(count, dtype=torch.bool), "sparse": torch.zeros(count, dtype=torch.bool),
            "has_alpha": torch.zeros(count, dtype=torch.bool), "source": torch.full((count,), source)}


def test_a_sequence_sources_frames_scored_on_two_ranks_pair_up_after_the_sync() -> None:
    ranks = [metric_collection(boundary_metrics=False, sequence=True) for _ in range(2)]
    frames = {"alley_1_0001": 1.0, "alley_1_0002": 0.8, "alley_1_0003": 0.8, "cave_0001": 0.5, "cave_0002": 0.25}
    shares = (["alley_1_0003", "cave_0001", "alley_1_0001"], ["cave_0002", "alley_1_0002"])  # any order, any rank
    for collection, keys in zip(ranks, shares):
        canonical = torch.tensor([frames[k] for k in keys]).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
        score_batch([collection], canonical, None, _validation_batch(keys, canonical))
    ranks[0]["temporal"].merge_state(ranks[1]["temporal"])
    values = computed_and_reset(ranks[0])
    # depth ~ 1 / C: alley 1 -> 1.25 -> 1.25, cave 2 -> 4
    expected = (0.25 / 1.125 + 0.0 + 2.0 / 3.0) / 3
    assert float(values["temporal_change"]) == pytest.approx(expected, rel=1e-6) and values["temporal_pairs"] == 3
    assert "temporal" not in metric_collection(boundary_metrics=False)


def test_a_sequence_sources_key_without_a_frame_number_is_a_bad_record() -> None:
    source = SourceConfig("clips", "x.tar", sequence=True)
    meta = SampleMeta(dataset="clips", f_px=30.0, metric=True, synthetic=False)
    good, bad = (make_sample(key, np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), np.float32), meta)
                 for key in ("scene/000012", "scene_last"))
    assert clip_and_frame(apply_flags(good, source, "eval").key) == ("scene", 12)
    with pytest.raises(ValueError, match="scene_last: a key without a frame number"):
        apply_flags(bad, source, "eval")
    assert apply_flags(bad, SourceConfig("photos", "x.tar"), "eval").key == "scene_last"
