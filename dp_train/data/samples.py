"""Records to `Sample`s: decoding, the source's flags and depth range, and the health checks that refuse what a
stream's use (depth or FOV training, evaluation) cannot take."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from dp_train.data.health import DataError, SourceHealth
from dp_train.data.sources import DEFAULT_READ_TIMEOUT, SourceConfig, clip_and_frame, raw_records
from dp_train.shards import Sample, decode_sample

METRIC_DEPTH_LIMITS = (1e-3, 1e5)
"""[min, max] metres a metric depth pixel may hold to be trained on or evaluated: outside (a 1 micron or a
10^30 m depth, from a unit or encoding mistake) its inverse depth would dominate or overflow the loss."""


def decoded(records: Iterator[dict], source: SourceConfig, health: SourceHealth, use: str = "eval"
            ) -> Iterator[Sample]:
    """Decode and validate records for `use` (see `apply_flags`); bad ones are counted and skipped."""
    for record in records:
        sample = decode_record(record, source, health, use)
        if sample is not None:
            yield sample


def decode_record(record: dict, source: SourceConfig, health: SourceHealth, use: str = "depth",
                  keep_alpha: bool = True) -> Sample | None:
    """The record as a Sample, or None (counted as bad) when it cannot be decoded or fails a check.

    With `keep_alpha` False the matting alpha is not decoded: only validation's
    boundary recall reads it, and at 1536 px it costs training ~10 ms a sample.
    """
    if not keep_alpha:
        record.pop("alpha.png", None)
    try:
        sample = apply_flags(decode_sample(record), source, use)
    except Exception as err:  # noqa: BLE001 - any decode failure is one bad record
        health.record_bad(f"{record.get('__key__', '?')} in {record.get('__url__', '?')}: {err}")
        return None
    health.record_ok()
    return sample


USES = ("depth", "fov", "distill", "eval")
"""What a stream's samples feed: the depth objective, the FOV objective (the module's `mode`), either with a teacher
network ("distill": the teacher labels samples without depth or focal length), or evaluation."""


def apply_flags(sample: Sample, source: SourceConfig, use: str = "depth") -> Sample:
    """Override the sample's flags with the source's, apply its depth range, and refuse what `use` cannot take.

    Every depth sample needs a stored valid pixel and metric ones a focal length (the health check). A
    sample written without depth (`depth_kind` "none": a focal-only photo, a matte) is never refused for
    having no depth pixel, but depth training refuses it, and FOV training any sample without a focal
    length (training with a teacher, "distill", refuses neither). Training also refuses a depth sample whose pixels all fall outside the depth range (nothing
    to learn from); evaluation keeps it, and counts it as an image with nothing to score.
    """
    sample = with_source_flags(sample, source)
    refusal = use_problem(sample, use)
    if source.sequence and clip_and_frame(sample.key) is None:
        refusal = "a key without a frame number at its end, in a sequence source (keys are <clip>_<frame>)"
    if refusal:
        raise ValueError(f"{sample.key}: {refusal}")
    if not sample.meta.has_depth:
        return sample
    for limits in (METRIC_DEPTH_LIMITS, source.depth_range):
        if sample.meta.metric and limits is not None:
            sample.valid = sample.valid & (sample.depth >= limits[0]) & (sample.depth <= limits[1])
        if limits is METRIC_DEPTH_LIMITS and not sample.valid.any():
            raise ValueError(f"{sample.key}: no valid depth pixel (all zero, masked out or beyond "
                             f"{METRIC_DEPTH_LIMITS} m)")
    if use != "eval" and not sample.valid.any():
        raise ValueError(f"{sample.key}: no valid depth pixel inside the depth range")
    return sample


def with_source_flags(sample: Sample, source: SourceConfig) -> Sample:
    """The sample with the flags its source sets (`metric` only on samples written with depth)."""
    flags = ("metric", "synthetic", "sparse") if sample.meta.has_depth else ("synthetic", "sparse")
    changes = {k: getattr(source, k) for k in flags if getattr(source, k) is not None}
    if changes:
        sample.meta = dataclasses.replace(sample.meta, **changes)
    return sample


def use_problem(sample: Sample, use: str) -> str | None:
    """Why a stream feeding `use` cannot take this sample (None: it can)."""
    meta = sample.meta
    has_focal = bool(meta.f_px and meta.f_px > 0)
    if meta.metric and not has_focal:
        return "a metric sample without a positive focal length"
    if use == "depth" and not meta.has_depth:
        return "written without depth (depth_kind 'none': a photo or matte set); depth training needs depth"
    if use == "fov" and not has_focal:
        return "without a focal length; the FOV stage trains on known focal lengths"
    return None


def first_sample(source: SourceConfig, timeout: float = DEFAULT_READ_TIMEOUT) -> Sample | None:
    """The source's first decodable sample as stored (no flags applied), or None when its first record
    cannot be read: the stream's health checks report that once the data is read."""
    health = SourceHealth(source.name, max_bad_fraction=1.0, min_records=1)
    try:
        record = next(raw_records(source.shard_urls()[:1], 1, 0, health, timeout=timeout), None)
        return None if record is None else decode_sample(record)
    except Exception:  # noqa: BLE001 - an unreadable source is reported by the stream, not here
        return None


def check_source_use(key: str, sources: list[SourceConfig], use: str) -> None:
    """Refuse, before any work, a source whose samples a stream feeding `use` cannot take (judged by its
    first sample, with the source's flags): e.g. a focal-only photo set in a depth-mode mixture."""
    for source in sources:
        sample = first_sample(source)
        problem = None if sample is None else use_problem(with_source_flags(sample, source), use)
        if problem:
            raise DataError(f"{key}: source {source.name!r} cannot be trained on in {use} mode: "
                            f"its sample {sample.key} is {problem}")
