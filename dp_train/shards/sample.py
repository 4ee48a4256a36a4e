"""One training sample as the shards hold it: its metadata (`SampleMeta`), its arrays (`Sample`) and the rules
a sample must satisfy before it is written (the layout of a shard is in dp_train/shards/__init__.py)."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
DEPTH_FORMATS = ("npy16", "npy32", "png16")
IMAGE_FORMATS = ("jpg", "png")
PNG16_MAX = 65535
DEPTH_KINDS = ("depth", "disparity", "none")
"""What a sample's depth member holds; "none": the sample was written without depth (photo / matte sets)."""
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")


class SampleError(ValueError):
    """A malformed sample; the message reads "<key>: <reason>"."""


@dataclass(frozen=True)
class SampleMeta:
    """Per-sample metadata, stored in the sample's json member.

    `metric`: depth is in metres; otherwise it is relative (up to scale and shift) and
    `depth_kind` says whether the stored values are depth or disparity (inverse depth);
    "none" marks a sample written without depth (a focal-only photo, a matte): it feeds the
    FOV loss, focal and boundary-recall metrics, never a depth loss or depth metric, and is
    never refused for having no valid depth pixel.
    `f_px` is the focal length in pixels of the stored image, None when unknown.
    """

    dataset: str
    f_px: float | None
    metric: bool
    synthetic: bool
    sparse: bool = False
    depth_kind: str = "depth"

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a non-empty string, got {self.dataset!r}")
        f_px = self.f_px
        if f_px is not None:
            if isinstance(f_px, bool) or not isinstance(f_px, numbers.Real):
                raise ValueError(f"f_px must be a number or None, got {f_px!r}")
            if not (math.isfinite(f_px) and f_px > 0):
                raise ValueError(f"f_px must be positive and finite, got {f_px!r}")
            object.__setattr__(self, "f_px", float(f_px))
        for name in ("metric", "synthetic", "sparse"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.depth_kind not in DEPTH_KINDS:
            raise ValueError(f"depth_kind must be one of {DEPTH_KINDS}, got {self.depth_kind!r}")
        if self.metric and self.depth_kind != "depth":
            raise ValueError("metric samples must have depth_kind 'depth'")

    @property
    def has_depth(self) -> bool:
        """Whether the sample was written with depth (metric or relative), not as a photo / matte only."""
        return self.depth_kind != "none"

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SampleMeta:
        """Build from a dict holding (at least) every field; raises ValueError otherwise."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"json is missing field(s) {missing}")
        return cls(**{n: d[n] for n in names})


@dataclass
class Sample:
    """One training sample.

    `depth` is HxW float32, 0 where invalid (sky, unknown). `valid` is HxW bool: depth
    finite, > 0, and inside the optional user mask; pixels excluded only by the mask keep
    their depth value, so consumers must use `valid`, not `depth > 0`.
    """

    key: str
    image: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    meta: SampleMeta
    alpha: np.ndarray | None = None

    def validate(self) -> None:
        """Raise SampleError if the key, array shapes or dtypes break the schema."""
        problem = _sample_problem(self)
        if problem:
            raise SampleError(f"{self.key}: {problem}")


def _sample_problem(s: Sample) -> str | None:
    """Describe what is wrong with a Sample's key and arrays, or None."""
    if not isinstance(s.key, str) or not KEY_PATTERN.fullmatch(s.key):
        return "key must be letters, digits, '_', '-' (and '/' between parts); no dots"
    img = s.image
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        return f"image must be HxWx3 uint8, got {getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
    hw = img.shape[:2]
    if not isinstance(s.depth, np.ndarray) or s.depth.dtype.kind != "f" or s.depth.shape != hw:
        return f"depth must be a float array of shape {hw}, got {getattr(s.depth, 'shape', type(s.depth))}"
    if not isinstance(s.valid, np.ndarray) or s.valid.dtype != bool or s.valid.shape != hw:
        return f"valid must be a bool array of shape {hw}"
    if s.alpha is not None:
        a = s.alpha
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.shape != hw:
            return f"alpha must be a float array of shape {hw}"
        if not (np.all(a >= 0) and np.all(a <= 1)):
            return "alpha values must lie in [0, 1]"
    if not isinstance(s.meta, SampleMeta):
        return "meta must be a SampleMeta"
    return None


def make_sample(
    key: str,
    image: np.ndarray,
    depth: np.ndarray,
    meta: SampleMeta,
    mask: np.ndarray | None = None,
    alpha: np.ndarray | None = None,
) -> Sample:
    """Build a Sample from raw depth: non-finite and <= 0 pixels become 0 and invalid;
    pixels where the optional bool `mask` is False are invalid too."""
    depth = np.asarray(depth, dtype=np.float32)
    positive = np.isfinite(depth) & (depth > 0)
    valid = positive if mask is None else positive & np.asarray(mask, dtype=bool)
    return Sample(key, image, np.where(positive, depth, np.float32(0)), valid, meta, alpha)


def sanitize_key(name: str) -> str:
    """Turn a file stem into a valid sample key (anything but [A-Za-z0-9_-] becomes '_')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
