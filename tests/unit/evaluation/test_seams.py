"""The seam score: seam lines where `merge_windows` switches windows, a ratio of 1 on a smooth map and the value the
arithmetic gives for a step on every seam, the ground truth's ratio beside it, sums that accumulate and sync, the
validation logs, the report's columns and the fine-tuning warning."""

from __future__ import annotations

import csv
import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dp_train.evaluation.per_image import evaluated_images
from dp_train.evaluation.report import seam_columns
from dp_train.evaluation.report_files import write_report, IMAGE_COLUMNS
from dp_train.evaluation.scoring import epoch_logs, metric_collection, score_batch
from dp_train.evaluation.seam_watch import SeamWatch
from dp_train.evaluation.seams import SEAM_REACH, SeamScore, seam_lines
from dp_train.model.config import DepthProConfig
from dp_train.model.network import WINDOW_LEVELS, merge_windows, seam_positions, split_windows, window_trim

TINY = DepthProConfig.preset("tiny", vit_img_size=128)
"""The smallest network the config allows: 512 px, seams 16 px apart at the closest."""
S = TINY.img_size
SLOPE = math.log(2.0) / S
"""ln inverse depth falls by ln 2 across the image along each axis: a smooth ramp."""
STEP = math.log(1.03)
"""A 3 % step of inverse depth."""
SPAN = 2 * SEAM_REACH
"""Pixels between the two ends of a span difference."""
RAMP_TOL = 2 * 2.0**-24 / (SPAN * SLOPE)
"""Relative error of a span difference of float32 inverse depth: each end rounded (2^-24 relative, that much in
ln), over the ramp's span difference; means of such differences err less."""


def ln_ramp(step: float = 0.0) -> torch.Tensor:
    """(S, S) float64 ln inverse depth: the ramp, plus `step` at every seam line (each line crossed adds one)."""
    x = torch.arange(S, dtype=torch.float64)
    along = SLOPE * x + step * sum((x >= p).double() for p in seam_positions(TINY))
    return along[None, :] + along[:, None]


def inverse(ln_map: torch.Tensor) -> torch.Tensor:
    """(1, S, S) float32 inverse depth of a ln inverse depth map."""
    return ln_map.exp().float()[None]


def measured(pred: torch.Tensor, target: torch.Tensor | None = None, truth: bool = True) -> dict[str, float]:
    """The seam ratios of one update."""
    metric = SeamScore(TINY)
    target = pred if target is None else target
    metric.update(pred, target, torch.full(target.shape, truth))
    return {name: float(value) for name, value in metric.compute().items()}


# ------------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("cfg", [DepthProConfig(), TINY], ids=["depth_pro_l", "tiny128"])
def test_seam_positions_are_where_merged_window_features_switch_windows(cfg):
    found = set()
    for scale, overlap in WINDOW_LEVELS:
        side, window, grid = round(cfg.img_size * scale), cfg.vit_img_size, cfg.grid_size
        count = split_windows(torch.zeros(1, 1, side, side), window, overlap).shape[0]
        index = torch.arange(count, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, grid, grid)
        merged = merge_windows(index, 1, window_trim(grid, overlap))[0, 0]  # each token: its window's number
        token_px = cfg.patch_size / scale
        for line in (merged[0], merged[:, 0]):  # along the first row, down the first column
            found |= {round((i + 1) * token_px) for i in torch.nonzero(line[1:] != line[:-1]).flatten().tolist()}
        # each switch halves the overlap of two neighbouring windows (Voronoi), in output pixels
        stride = int(window * (1 - overlap))
        midpoints = {round((k * stride + (k - 1) * stride + window) / 2 / scale) for k in range(1, math.isqrt(count))}
        assert midpoints <= set(seam_positions(cfg))
    assert tuple(sorted(found)) == seam_positions(cfg)


def test_depth_pro_l_seams_and_their_scaling_to_another_map():
    assert seam_positions(DepthProConfig()) == (336, 576, 624, 912, 960, 1200)  # 5x5 at 1536, 3x3 at 768
    rows, cols = seam_lines(DepthProConfig(), 768, 1024)
    assert rows == (168, 288, 312, 456, 480, 600) and cols == (224, 384, 416, 608, 640, 800)
    assert seam_lines(DepthProConfig()) == ((336, 576, 624, 912, 960, 1200),) * 2


# ------------------------------------------------------------------------------------------------- the score


def test_a_smooth_ramp_reads_1_and_a_step_on_every_seam_reads_what_the_arithmetic_gives():
    assert measured(inverse(ln_ramp()))["seam_ratio"] == pytest.approx(1.0, rel=RAMP_TOL)
    # on a seam a span difference is the ramp's SPAN * SLOPE plus the step, elsewhere the ramp's alone
    expected = 1 + STEP / (SPAN * SLOPE)
    assert measured(inverse(ln_ramp(STEP)))["seam_ratio"] == pytest.approx(expected, rel=RAMP_TOL)
    assert expected > 2  # a 3 % step is plain to see


def test_the_score_ignores_the_scale_of_the_prediction():
    pred = inverse(ln_ramp(STEP))
    assert measured(7.0 * pred)["seam_ratio"] == pytest.approx(measured(pred)["seam_ratio"], rel=RAMP_TOL)


def test_the_ground_truth_ratio_shows_a_real_edge_on_the_seams_and_counts_only_its_pixels():
    pred = inverse(ln_ramp(STEP))
    assert measured(pred, inverse(ln_ramp()))["seam_ratio_gt"] == pytest.approx(1.0, rel=RAMP_TOL)
    same = measured(pred, inverse(ln_ramp(STEP)))  # the scene itself steps on the lines: not the network's fault
    assert same["seam_ratio_gt"] == pytest.approx(same["seam_ratio"], rel=RAMP_TOL)
    nothing = measured(pred, inverse(ln_ramp()), truth=False)
    assert math.isnan(nothing["seam_ratio_gt"]) and nothing["seam_ratio"] == same["seam_ratio"]


def test_sums_accumulate_over_images_and_sync_to_the_single_process_result():
    stepped, smooth = inverse(ln_ramp(STEP)), inverse(ln_ramp())
    single = SeamScore(TINY)
    single.update(torch.cat([stepped, smooth]), torch.cat([smooth, smooth]), torch.ones(2, S, S, dtype=torch.bool))
    ranks = [SeamScore(TINY), SeamScore(TINY)]
    for rank, pred in zip(ranks, (stepped, smooth)):
        rank.update(pred, smooth, torch.ones(1, S, S, dtype=torch.bool))
    ranks[0].merge_state(ranks[1])  # what torchmetrics' DDP sync does with the sum states
    # equal pair counts per image: the seam mean is that of (SPAN SLOPE + STEP) and SPAN SLOPE, the rest SPAN SLOPE
    expected = 1 + STEP / (2 * SPAN * SLOPE)
    for metric in (single, ranks[0]):
        assert float(metric.compute()["seam_ratio"]) == pytest.approx(expected, rel=RAMP_TOL)
    torch.testing.assert_close(ranks[0].sums, single.sums, rtol=1e-12, atol=0)


def test_a_prediction_not_at_the_network_resolution_is_refused():
    with pytest.raises(ValueError, match="expected the network's 512 x 512 prediction, got \\(256, 256\\)"):
        SeamScore(TINY).update(torch.ones(1, 256, 256), torch.ones(1, 256, 256), torch.ones(1, 256, 256).bool())


# --------------------------------------------------------------------------------- validation logs, report


def fit_validation_batch(sparse: list[bool]) -> dict:
    """Validation during `fit`: the stepped prediction's images, their ground truth the smooth ramp at S."""
    count = len(sparse)
    target = inverse(ln_ramp())[None].expand(count, 1, S, S)
    return {"key": [f"k{i}" for i in range(count)], "image": torch.zeros(count, 3, S, S), "target": target,
            "valid": torch.ones(count, 1, S, S, dtype=torch.bool), "f_px": torch.full((count,), float(S)),
            "metric": torch.ones(count, dtype=torch.bool), "sparse": torch.tensor(sparse),
            "has_alpha": torch.zeros(count, dtype=torch.bool), "source": torch.tensor([0] * count)}


def test_validation_logs_seam_ratios_per_source_and_skips_sparse_ground_truth():
    collections = {f"val__{name}": metric_collection(False, network=TINY) for name in ("dense", "lidar")}
    pred = inverse(ln_ramp(STEP))[None]
    score_batch([collections["val__dense"]], pred, None, fit_validation_batch([False]))
    score_batch([collections["val__lidar"]], pred, None, fit_validation_batch([True]))
    logs = {key: float(value) for key, value, _ in epoch_logs(collections, "val", ["dense", "lidar"])}
    expected = 1 + STEP / (SPAN * SLOPE)
    assert logs["val/dense/seam_ratio"] == pytest.approx(expected, rel=RAMP_TOL) == logs["val/seam_ratio"]
    assert logs["val/dense/seam_ratio_gt"] == pytest.approx(1.0, rel=RAMP_TOL)
    assert logs["val/lidar/seam_ratio"] == pytest.approx(expected, rel=RAMP_TOL)
    assert math.isnan(logs["val/lidar/seam_ratio_gt"])
    assert "seams" not in metric_collection(False)  # no network, no seams to measure


def test_the_report_has_per_image_and_pooled_per_dataset_seam_columns(tmp_path):
    batch = fit_validation_batch([False, False])
    pred = torch.cat([inverse(ln_ramp(STEP)), inverse(ln_ramp())])[:, None]
    rows = []
    for image in evaluated_images(pred, batch, torch.ones(2, dtype=torch.bool)):
        row = dict.fromkeys(IMAGE_COLUMNS, math.nan) | {"dataset": "bench", "key": str(image.index), "empty": 0}
        rows.append(row | seam_columns(pred, batch, image, seam_positions(TINY)))
    assert rows[0]["seam_ratio"] == pytest.approx(1 + STEP / (SPAN * SLOPE), rel=RAMP_TOL)
    assert rows[1]["seam_ratio"] == pytest.approx(1.0, rel=RAMP_TOL)
    write_report(tmp_path, rows, ["bench"], {}, [])
    with open(tmp_path / "per_dataset.csv") as fh:
        (summary,) = list(csv.DictReader(fh))
    # pooled from the sums, as the logged metric: not the mean of the two images' ratios
    assert float(summary["seam_ratio"]) == pytest.approx(1 + STEP / (2 * SPAN * SLOPE), rel=RAMP_TOL)
    assert float(summary["seam_ratio_gt"]) == pytest.approx(1.0, rel=RAMP_TOL)
    report = (tmp_path / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| dataset |"))
    assert header.endswith("| seam ratio | seam ratio, GT | temporal change |")


# -------------------------------------------------------------------------------------------- the warning


def validated(watch: SeamWatch, metrics: dict[str, float], sanity: bool = False) -> None:
    """One validation's end as Lightning calls it, with these logged values (rank zero)."""
    trainer = SimpleNamespace(sanity_checking=sanity, is_global_zero=True, global_step=500,
                              callback_metrics={k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()})
    watch.on_validation_end(trainer, None)


def test_seam_watch_warns_once_per_source_when_the_ratio_rises_above_factor_times_its_first(caplog):
    watch = SeamWatch(factor=1.25)
    with caplog.at_level(logging.WARNING, logger="dp_train.evaluation.seam_watch"):
        validated(watch, {"val/a/seam_ratio": 9.0, "val/b/seam_ratio": 9.0, "val/seam_ratio": 9.0}, sanity=True)
        validated(watch, {"val/a/seam_ratio": 1.2, "val/b/seam_ratio": 1.0, "val/seam_ratio": 1.2})
        validated(watch, {"val/a/seam_ratio": 1.45, "val/b/seam_ratio": 1.0, "val/seam_ratio": 1.45})
        assert not caplog.records  # x1.21: within the factor
        validated(watch, {"val/a/seam_ratio": 1.6, "val/b/seam_ratio": 1.1, "val/seam_ratio": 1.6})
        validated(watch, {"val/a/seam_ratio": 1.8, "val/b/seam_ratio": 1.1, "val/seam_ratio": 1.8})
    (record,) = caplog.records  # `val/seam_ratio` repeats source a: not warned about twice
    assert record.getMessage().startswith("val/a/seam_ratio rose from 1.200 to 1.600 (x1.33, above SeamWatch's x1.25)")
    resumed = SeamWatch(factor=1.25)
    resumed.load_state_dict(watch.state_dict())
    assert resumed.first == {"val/a/seam_ratio": 1.2, "val/b/seam_ratio": 1.0}
    assert resumed.warned == {"val/a/seam_ratio"}


@pytest.mark.parametrize("factor", [1.0, 0.5, math.inf, "2"])
def test_seam_watch_refuses_a_factor_that_cannot_rise(factor):
    with pytest.raises(ValueError, match=f"trainer.callbacks: SeamWatch factor={factor!r}: must be a number above 1"):
        SeamWatch(factor=factor)
