"""Scoring evaluation batches into per-source torchmetrics: which metric each image feeds, by what its ground
truth holds, and their values at the end of an epoch. The LightningModule's validation and test steps call it."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.aggregation import SumMetric

from dp_train.data.sources import clip_and_frame
from dp_train.evaluation.boundary import BoundaryF1, BoundaryRecall
from dp_train.evaluation.depth_accuracy import AlignedDepthMetrics, DepthMetrics
from dp_train.evaluation.focal import FocalMetrics
from dp_train.evaluation.per_image import EvaluatedImage, evaluated_images, focal_from_fov
from dp_train.evaluation.seams import SeamScore, seam_inputs
from dp_train.evaluation.temporal import TemporalChange, clip_id
from dp_train.model.config import DepthProConfig
from dp_train.utils.visualize import depth_panel


def metric_collection(boundary_metrics: bool, sequence: bool = False,
                      network: DepthProConfig | None = None) -> MetricCollection:
    """The metrics of one evaluated source (boundary F1 / recall only when asked: they cost the most; the
    temporal change only for a source of clips' frames, `SourceConfig.sequence`; the seam score given the
    `network` whose window seams it measures, dp_train/evaluation/seams.py)."""
    metrics = {"depth": DepthMetrics(), "aligned": AlignedDepthMetrics(), "focal": FocalMetrics(),
               "empty_images": SumMetric()}
    if boundary_metrics:
        metrics |= {"boundary_f1": BoundaryF1(), "boundary_recall": BoundaryRecall()}
    if sequence:
        metrics["temporal"] = TemporalChange()
    if network is not None:
        metrics["seams"] = SeamScore(network)
    return MetricCollection(metrics, compute_groups=False)


def real_images(batch: dict) -> torch.Tensor:
    """(B,) bool: the batch's real images (padding batches, equal counts per rank, are run but not scored)."""
    return ~batch["padding"] if "padding" in batch else torch.ones_like(batch["source"], dtype=torch.bool)


def score_batch(metrics: list[MetricCollection], pred: torch.Tensor, fov: torch.Tensor | None,
                batch: dict) -> list[EvaluatedImage]:
    """Update the metrics of each real image's source (`metrics[source id]`) and return those images, at the
    ground truth's resolution (dp_train/evaluation/per_image.py), for whoever scores them further (the report)."""
    images = evaluated_images(pred, batch, real_images(batch))
    for image in images:
        collection = metrics[int(batch["source"][image.index])]
        update_image_metrics(collection, image, None if fov is None else fov[image.index])
        if "temporal" in collection:
            update_temporal(collection["temporal"], image, batch["key"][image.index])
        if "seams" in collection:
            collection["seams"].update(*seam_inputs(pred, batch, image))
    return images


def update_temporal(metric: TemporalChange, image: EvaluatedImage, key: str) -> None:
    """A clip's frame, by its key's clip and frame number, for the temporal change (paired with its neighbours
    after the sync: dp_train/evaluation/temporal.py). Depth up to a fixed focal length, 1 / C, as `predict` gives
    a clip one focal length: the figure is that of `predict`'s output, whatever the ground truth holds."""
    clip, frame = clip_and_frame(key) or ("", -1)  # the data health check refuses keys without a frame number
    metric.update((1.0 / image.canonical)[None], torch.tensor([clip_id(clip)]), torch.tensor([frame]))


def update_image_metrics(metrics: MetricCollection, image: EvaluatedImage, fov: torch.Tensor | None) -> None:
    """One image's contribution, by what its ground truth holds: depth metrics (metric depth, true focal
    length), aligned AbsRel / delta1 (relative depth), focal error (a known focal length), boundary F1
    (metric, non-sparse depth; pairs with an invalid pixel left out), boundary recall (a matte); an image
    written with depth but with no pixel to score is counted (`empty_images`)."""
    if image.has_depth:
        metrics["depth"].update(image.depth()[None], image.gt_depth[None], image.valid[None])
    if image.relative_valid.any():
        metrics["aligned"].update(*(x[None] for x in image.aligned()))
    if image.is_empty:
        metrics["empty_images"].update(1.0)
    if fov is not None:
        metrics["focal"].update(focal_from_fov(fov, image.width), image.f_px)
    if "boundary_f1" in metrics:
        inverse = 1.0 / image.canonical  # scale-invariant metrics: proportional to depth is enough
        if image.has_depth and not image.sparse:
            metrics["boundary_f1"].update(inverse[None], image.gt_depth[None], valid=image.valid[None])
        if image.alpha is not None:
            metrics["boundary_recall"].update(inverse[None], image.alpha[None])


def computed(metric: Metric) -> Any:
    """The metric's value; one that no image of this rank updated (a source whose ground truth does not feed
    it, e.g. depth metrics of a matte set: NaN) is computed without torchmetrics' warning about it."""
    with warnings.catch_warnings():
        if not metric.update_called:
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method")
        return metric.compute()


def computed_and_reset(collection: MetricCollection) -> dict[str, Any]:
    """Every metric's values by name (torchmetrics syncs them across ranks), each metric reset after."""
    values: dict[str, Any] = {}
    for group, metric in collection.items():
        result = computed(metric)
        values |= result if isinstance(result, dict) else {group: result}
        metric.reset()
    return values


def first_image_panel(batch: dict, pred: torch.Tensor) -> Any:
    """An RGB | GT | prediction | error panel (HWC uint8) of the batch's first image, at the network's resolution."""
    image = ((batch["image"][0].float().permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255)
    return depth_panel(
        image.astype(np.uint8),
        batch["target"][0, 0].float().cpu().numpy(),
        pred[0, 0].float().cpu().numpy(),
        batch["valid"][0, 0].cpu().numpy(),
    )


def epoch_logs(metrics: dict[str, MetricCollection], split: str,
               names: list[str]) -> list[tuple[str, Any, bool]]:
    """(key, value, on the progress bar) of every `<split>__<source>` collection's values, each reset after:
    `<split>/<metric>` is the first source's (what checkpointing monitors); with several sources each also
    gets `<split>/<source>/<metric>`."""
    logs = []
    for key, collection in metrics.items():
        if not key.startswith(f"{split}__"):
            continue
        name = key.split("__", 1)[1]
        for metric_name, value in computed_and_reset(collection).items():
            if len(names) > 1:
                logs.append((f"{split}/{name}/{metric_name}", value, False))
            if name == names[0]:
                logs.append((f"{split}/{metric_name}", value, metric_name in ("abs_rel", "delta1")))
    return logs
