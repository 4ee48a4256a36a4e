"""Shard schema: one training sample <-> a webdataset dict of bytes, and the shard writer.

A sample inside a tar shard is the group of members sharing a key (see shards/README.md):

    KEY.jpg or KEY.png   8-bit RGB image
    KEY.depth.npy        HxW float16 (depth_format "npy16") or float32 ("npy32") depth
    KEY.depth.png        HxW uint16 ("png16"); depth = value * json["depth_png_scale"]
                         (no depth member when json["depth_kind"] is "none": a sample written without
                         depth, e.g. a focal-only photo or a matte, decodes with an all-invalid depth map)
    KEY.mask.png         optional 8-bit, 0 = excluded; only when validity is not implied by depth
    KEY.alpha.png        optional 8-bit matting alpha; alpha = value / 255
    KEY.json             metadata: SampleMeta fields, schema_version, depth_format, width, height

Invalid depth pixels (non-finite, <= 0, sky) are stored as 0. Never decode these shards
with webdataset's image decoders: they clip 16-bit PNGs to 8 bits. Use `decode_sample`.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import re
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from PIL import Image
from webdataset import TarWriter

SCHEMA_VERSION = 1
DEPTH_FORMATS = ("npy16", "npy32", "png16")
IMAGE_FORMATS = ("jpg", "png")
DEPTH_KINDS = ("depth", "disparity", "none")
"""What a sample's depth member holds; "none": the sample was written without depth (photo / matte sets)."""
JPEG_QUALITY = 95
FLOAT16_MAX = 65504.0
FLOAT16_MIN_NORMAL = 2.0**-14
PNG16_MAX = 65535
REQUIRED_JSON_FIELDS = (
    "schema_version", "dataset", "f_px", "metric", "synthetic", "sparse",
    "depth_kind", "depth_format", "width", "height",
)
_KEY_RE = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
_TAR_MTIME = 0.0  # fixed member time: the same samples give byte-identical shards
_PNG16_MODES = ("I;16", "I;16L", "I;16B", "I")
_RGB8_MODES = ("RGB", "L", "LA", "RGBA", "P", "PA", "CMYK", "YCbCr", "1")
"""Image modes of 8 bits (or fewer) per channel, converted to RGB without loss of depth."""
_CV2_JPEG_FLAGS = (  # None where OpenCV is too old to decode to RGB: Pillow decodes every image
    cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION if hasattr(cv2, "IMREAD_COLOR_RGB") else None
)


class SampleError(ValueError):
    """A malformed sample; the message reads "<key>: <reason>"."""


class ShardIndexError(ValueError):
    """An unreadable or inconsistent shard index; the message starts with its path."""


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
    if not isinstance(s.key, str) or not _KEY_RE.fullmatch(s.key):
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


# ----------------------------------------------------------------------------- encoding


def encode_sample(
    sample: Sample,
    depth_format: str = "npy16",
    image_format: str = "jpg",
    png_scale: float | None = None,
) -> dict[str, bytes | str]:
    """Encode a Sample as a webdataset dict of bytes (plus the str "__key__").

    `png_scale` (depth units per PNG count) applies to depth_format "png16"; None picks
    the finest scale of the form {1,2,5}e-k that fits the depth range. Raises SampleError
    when the sample is malformed or its depth does not fit the format.
    """
    sample.validate()
    _check_choice("depth_format", depth_format, DEPTH_FORMATS)
    _check_choice("image_format", image_format, IMAGE_FORMATS)
    depth = sample.depth.astype(np.float32)
    positive = np.isfinite(depth) & (depth > 0)
    depth[~positive] = 0
    valid = sample.valid & positive
    h, w = depth.shape
    info: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, **sample.meta.to_json(),
        "depth_format": depth_format, "width": w, "height": h,
    }
    raw: dict[str, bytes | str] = {"__key__": sample.key, image_format: _image_bytes(sample.image, image_format)}
    if sample.meta.has_depth:
        try:
            depth_member, depth_bytes = _encode_depth(depth, depth_format, png_scale, info)
        except ValueError as e:
            raise SampleError(f"{sample.key}: {e}") from None
        raw[depth_member] = depth_bytes
    elif valid.any():
        raise SampleError(f"{sample.key}: depth_kind 'none' (written without depth) but the depth map has "
                          f"{int(valid.sum())} valid pixel(s)")
    raw["json"] = json.dumps(info, sort_keys=True).encode()
    if np.any(positive & ~valid):
        raw["mask.png"] = _png_bytes(valid.astype(np.uint8) * 255)
    if sample.alpha is not None:
        raw["alpha.png"] = _png_bytes(np.rint(sample.alpha * 255).astype(np.uint8))
    return raw


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ValueError unless value is one of choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _encode_depth(
    depth: np.ndarray, depth_format: str, png_scale: float | None, info: dict[str, Any]
) -> tuple[str, bytes]:
    """Encode depth (0 where invalid) as (member name, bytes); png16 adds its scale to info."""
    if depth_format == "png16":
        scale = png_scale if png_scale is not None else auto_png_scale(float(depth.max(initial=0)))
        info["depth_png_scale"] = scale
        return "depth.png", _png_bytes(quantize_png16(depth, scale))
    if depth_format == "npy16":
        depth = to_float16(depth)
    buf = io.BytesIO()
    np.save(buf, depth, allow_pickle=False)
    return "depth.npy", buf.getvalue()


def to_float16(depth: np.ndarray) -> np.ndarray:
    """Cast depth (>= 0) to float16, refusing values above 65504 and keeping positive
    values positive; warns when values fall below float16's normal range."""
    d_max = float(depth.max(initial=0))
    if d_max > FLOAT16_MAX:
        raise ValueError(
            f"depth max {d_max:g} exceeds the float16 range ({FLOAT16_MAX:g}); "
            "use depth_format 'npy32' or 'png16'"
        )
    positive = depth > 0
    n_tiny = int(np.count_nonzero(positive & (depth < FLOAT16_MIN_NORMAL)))
    if n_tiny:
        warnings.warn(
            f"{n_tiny} depth values below {FLOAT16_MIN_NORMAL:.3g} lose float16 precision; "
            "use depth_format 'npy32' (or rescale relative depth)",
            stacklevel=3,
        )
    d16 = depth.astype(np.float16)
    d16[positive & (d16 == 0)] = np.float16(2.0**-24)
    return d16


def auto_png_scale(max_depth: float) -> float:
    """The finest scale s in {1,2,5}x10^k with max_depth / s <= 65535 (1e-3 if max_depth <= 0)."""
    if max_depth <= 0:
        return 1e-3
    needed = max_depth / PNG16_MAX
    exp = math.floor(math.log10(needed))
    for e in (exp, exp + 1):
        for m in (1, 2, 5):
            scale = float(f"{m}e{e}")
            if scale >= needed:
                return scale
    raise AssertionError("unreachable: 1e(exp+1) >= needed")


def quantize_png16(depth: np.ndarray, scale: float) -> np.ndarray:
    """Depth (0 where invalid) -> uint16 counts of `scale`; positive depth stays >= 1."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"depth_png_scale must be positive, got {scale!r}")
    q = np.rint(depth.astype(np.float64) / scale)
    if q.max(initial=0) > PNG16_MAX:
        raise ValueError(
            f"depth max {float(depth.max()):g} does not fit 16 bits at depth_png_scale {scale:g}"
        )
    q[(depth > 0) & (q < 1)] = 1
    return q.astype(np.uint16)


def _image_bytes(image: np.ndarray, image_format: str) -> bytes:
    """Encode an HxWx3 uint8 RGB image as JPEG (quality 95) or lossless PNG."""
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if image_format == "jpg":
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        pil.save(buf, format="PNG")
    return buf.getvalue()


def _png_bytes(plane: np.ndarray) -> bytes:
    """Encode a 2-D uint8 (8-bit) or uint16 (16-bit) array as a grayscale PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane)).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- decoding


def decode_sample(raw: dict[str, Any]) -> Sample:
    """Decode and validate a webdataset dict (raw bytes, no decoder) into a Sample.

    Raises SampleError("<key>: <reason>") when anything is missing or malformed.
    """
    key = raw.get("__key__", "<no __key__>")
    key = key.decode() if isinstance(key, bytes) else str(key)
    try:
        return _decode(key, raw)
    except Exception as e:
        raise SampleError(f"{key}: {e}") from e


def _decode(key: str, raw: dict[str, Any]) -> Sample:
    """decode_sample without the error wrapping."""
    info = _read_member(raw, "json", json.loads)
    if not isinstance(info, dict):
        raise ValueError("json member is not an object")
    missing = [f for f in REQUIRED_JSON_FIELDS if f not in info]
    if missing:
        raise ValueError(f"json is missing field(s) {missing}")
    if info["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"unsupported schema_version {info['schema_version']!r} (expected {SCHEMA_VERSION})")
    meta = SampleMeta.from_json(info)
    image = _decode_image(raw)
    h, w = image.shape[:2]
    if (info["width"], info["height"]) != (w, h):
        raise ValueError(f"image is {w}x{h} but json says {info['width']}x{info['height']}")
    depth = _decode_depth(raw, info) if meta.has_depth else _no_depth(raw, (h, w))
    if depth.shape != (h, w):
        raise ValueError(f"depth shape {depth.shape} does not match image shape {(h, w)}")
    if not np.isfinite(depth).all():
        raise ValueError("depth has non-finite values")
    if (depth < 0).any():
        raise ValueError("depth has negative values")
    valid = depth > 0
    if "mask.png" in raw:
        valid &= _read_plane8(raw, "mask.png", (h, w)) > 0
    alpha = None
    if "alpha.png" in raw:
        alpha = _read_plane8(raw, "alpha.png", (h, w)).astype(np.float32) / 255
    return Sample(key, image, depth, valid, meta, alpha)


def _read_member(raw: dict[str, Any], name: str, decode: Callable[[bytes], Any]) -> Any:
    """Decode member `name`, naming it in any error."""
    if name not in raw:
        raise ValueError(f"missing member '{name}'")
    try:
        return decode(raw[name])
    except Exception as e:
        raise ValueError(f"cannot decode '{name}': {e}") from e


def _decode_image(raw: dict[str, Any]) -> np.ndarray:
    """The single jpg/png member as an HxWx3 uint8 RGB array."""
    present = [n for n in IMAGE_FORMATS if n in raw]
    if len(present) != 1:
        raise ValueError(f"expected exactly one image member (jpg or png), found {present or 'none'}")
    return _read_member(raw, present[0], _load_rgb)


def _load_rgb(data: bytes) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array.

    RGB and grayscale JPEGs go through OpenCV: about 30% faster than Pillow and pixel-identical
    to it for them (EXIF orientation is ignored, as Pillow's `np.array(img)` does). PNG, CMYK
    JPEG and data OpenCV cannot decode (truncated JPEG: Pillow raises) go through Pillow.
    """
    with Image.open(io.BytesIO(data)) as img:
        if _CV2_JPEG_FLAGS is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
            image = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_JPEG_FLAGS)
            if image is not None:
                return image
        if img.mode not in _RGB8_MODES:
            raise ValueError(f"image is a {img.format} of mode {img.mode}: training images must be 8-bit "
                             "(converting would clip it to 8 bits; re-encode it with make_shards)")
        return np.array(img if img.mode == "RGB" else img.convert("RGB"))


def _no_depth(raw: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """The all-invalid depth map of a sample written without depth (refusing one that has a depth member)."""
    present = [name for name in ("depth.npy", "depth.png") if name in raw]
    if present:
        raise ValueError(f"depth_kind 'none' (written without depth) but it has a '{present[0]}' member")
    return np.zeros(shape, np.float32)


def _decode_depth(raw: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
    """The depth member as HxW float32, according to info["depth_format"]."""
    fmt = info["depth_format"]
    if fmt == "png16":
        scale = info.get("depth_png_scale")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"png16 depth needs a positive depth_png_scale, got {scale!r}")
        counts = _read_member(raw, "depth.png", load_png16)
        return (counts.astype(np.float64) * scale).astype(np.float32)
    if fmt not in ("npy16", "npy32"):
        raise ValueError(f"unknown depth_format {fmt!r}")
    arr = _read_member(raw, "depth.npy", lambda b: np.load(io.BytesIO(b), allow_pickle=False))
    expected = np.dtype(np.float16 if fmt == "npy16" else np.float32)
    if arr.dtype != expected:
        raise ValueError(f"depth.npy has dtype {arr.dtype}, depth_format {fmt} needs {expected}")
    if arr.ndim != 2:
        raise ValueError(f"depth.npy must be 2-D, got shape {arr.shape}")
    if arr.dtype == np.float16:  # torch converts with F16C instructions, ~5x faster than numpy's astype
        return torch.from_numpy(arr).float().numpy()
    return arr


def load_png16(data: bytes) -> np.ndarray:
    """Decode a 16-bit grayscale PNG to uint16, without clipping to 8 bits."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in _PNG16_MODES:
            raise ValueError(f"expected a 16-bit grayscale PNG, got mode {img.mode}")
        arr = np.array(img)
    if arr.dtype != np.uint16:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > PNG16_MAX:
            raise ValueError("16-bit PNG values out of range")
        arr = arr.astype(np.uint16)
    return arr


def _read_plane8(raw: dict[str, Any], name: str, shape: tuple[int, int]) -> np.ndarray:
    """An 8-bit grayscale PNG member of the given shape as uint8."""

    def load(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode != "L":
                raise ValueError(f"expected an 8-bit grayscale PNG, got mode {img.mode}")
            return np.array(img)

    plane = _read_member(raw, name, load)
    if plane.shape != shape:
        raise ValueError(f"'{name}' shape {plane.shape} does not match image shape {shape}")
    return plane


# ----------------------------------------------------------------------------- shards


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text to `path` via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tar_bytes(raw: dict[str, bytes | str]) -> int:
    """Bytes the members of an encoded sample take in a tar (512-byte header + padded data)."""
    sizes = [len(v) for k, v in raw.items() if not k.startswith("_")]
    return sum(512 + -(-n // 512) * 512 for n in sizes)


class ShardWriter:
    """Write samples into tar shards `out_dir/{prefix}-{i:06d}.tar` plus `{prefix}.index.json`.

    Each shard is written as `.tar.tmp` and renamed once complete; a new shard starts after
    `max_samples` samples or once a shard holds `max_bytes`. `close()` writes the index
    atomically. Leaving the context manager by an exception calls `abort()` instead: the
    partial shard is deleted, complete shards stay, and the index (listing only those)
    says `"complete": false`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str,
        max_samples: int = 1000,
        max_bytes: int = 1 << 30,
        depth_format: str = "npy16",
        image_format: str = "jpg",
    ) -> None:
        if not prefix or "/" in prefix or prefix.startswith("."):
            raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be >= 1")
        _check_choice("depth_format", depth_format, DEPTH_FORMATS)
        _check_choice("image_format", image_format, IMAGE_FORMATS)
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.depth_format = depth_format
        self.image_format = image_format
        self.shards: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._file: Any = None
        self._tar: TarWriter | None = None
        self._count = 0
        self._bytes = 0
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def index_path(self) -> Path:
        """Path of the index file written on close."""
        return self.out_dir / f"{self.prefix}.index.json"

    @property
    def num_samples(self) -> int:
        """Samples written so far (complete shards plus the open one)."""
        return sum(s["samples"] for s in self.shards) + self._count

    def _shard_path(self, i: int) -> Path:
        """Final path of shard number i."""
        return self.out_dir / f"{self.prefix}-{i:06d}.tar"

    def write(self, sample: Sample) -> None:
        """Encode and write one sample."""
        self.write_encoded(encode_sample(sample, self.depth_format, self.image_format))

    def write_encoded(self, raw: dict[str, bytes | str]) -> None:
        """Write a dict produced by `encode_sample` (e.g. encoded in a worker process)."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        key = raw.get("__key__")
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or "json" not in raw:
            raise ValueError(f"not an encoded sample (key {key!r}); use encode_sample")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        if self._tar is None:
            self._file = open(self._tmp_path(), "wb")
            self._tar = TarWriter(self._file, encoder=False, mtime=_TAR_MTIME)
        self._tar.write(raw)
        self._keys.add(key)
        self._count += 1
        self._bytes += _tar_bytes(raw)
        if self._count >= self.max_samples or self._bytes >= self.max_bytes:
            self._finish_shard()

    def _tmp_path(self) -> Path:
        """Temporary path of the shard being written."""
        final = self._shard_path(len(self.shards))
        return final.with_name(final.name + ".tmp")

    def _close_tar(self) -> None:
        """Close the open tar stream and its file."""
        tar, file = self._tar, self._file
        self._tar, self._file, self._count, self._bytes = None, None, 0, 0
        try:
            tar.close()
        finally:
            file.close()

    def _finish_shard(self) -> None:
        """Close the open shard and rename it to its final name."""
        count, tmp = self._count, self._tmp_path()
        self._close_tar()
        final = self._shard_path(len(self.shards))
        os.replace(tmp, final)
        self.shards.append({"name": final.name, "samples": count})

    def _discard_shard(self) -> None:
        """Close and delete the partial shard, if any."""
        if self._tar is None:
            return
        tmp = self._tmp_path()
        try:
            self._close_tar()
        finally:
            tmp.unlink(missing_ok=True)

    def _write_index(self, complete: bool) -> None:
        """Write {prefix}.index.json atomically."""
        n = len(self.shards)
        index = {
            "schema_version": SCHEMA_VERSION,
            "prefix": self.prefix,
            "complete": complete,
            "depth_format": self.depth_format,
            "image_format": self.image_format,
            "samples": sum(s["samples"] for s in self.shards),
            "shards": self.shards,
            "url_pattern": f"{self.prefix}-{{{0:06d}..{n - 1:06d}}}.tar" if n else None,
        }
        write_text_atomic(self.index_path, json.dumps(index, indent=2) + "\n")

    def close(self) -> None:
        """Finish the open shard and write the index (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._tar is not None:
            self._finish_shard()
        self._write_index(complete=True)

    def abort(self) -> None:
        """Delete the partial shard and write an index of the complete ones, marked incomplete."""
        if self._closed:
            return
        self._closed = True
        self._discard_shard()
        self._write_index(complete=False)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _index_problem(index: Any, root: Path) -> str | None:
    """Describe what is wrong with a loaded index (shards relative to root), or None."""
    if not isinstance(index, dict):
        return "not a JSON object"
    for name, kind in (("schema_version", int), ("prefix", str), ("complete", bool),
                       ("samples", int), ("shards", list)):
        if not isinstance(index.get(name), kind):
            return f"field '{name}' missing or not {kind.__name__}"
    if index["schema_version"] != SCHEMA_VERSION:
        return f"unsupported schema_version {index['schema_version']} (expected {SCHEMA_VERSION})"
    total = 0
    for i, shard in enumerate(index["shards"]):
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str)
                and shard["name"].endswith(".tar") and "/" not in shard["name"]
                and isinstance(shard.get("samples"), int) and shard["samples"] >= 0):
            return f"shards[{i}] must be {{'name': '<file>.tar', 'samples': <int >= 0>}}"
        if not (root / shard["name"]).is_file():
            return f"shard file {shard['name']} not found next to the index"
        total += shard["samples"]
    if total != index["samples"]:
        return f"'samples' is {index['samples']} but the shards hold {total}"
    return None


def read_index(path: str | Path) -> dict[str, Any]:
    """Load and validate a shard index; raises ShardIndexError naming the file.

    Warns when the index was written by an aborted ShardWriter ("complete": false).
    """
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except OSError as e:
        raise ShardIndexError(f"{path}: cannot read shard index ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardIndexError(f"{path}: shard index is not valid JSON ({e})") from None
    problem = _index_problem(index, path.parent)
    if problem:
        raise ShardIndexError(f"{path}: invalid shard index: {problem}")
    if not index["complete"]:
        warnings.warn(f"{path}: shard writing was interrupted; only complete shards are listed")
    return index


def shard_counts(index_path: str | Path) -> list[int]:
    """Samples in each shard listed in an index, in `shard_urls` order."""
    return [int(shard["samples"]) for shard in read_index(index_path)["shards"]]


def shard_urls(index_path: str | Path) -> list[str]:
    """Paths of the shards listed in an index, in order (validated with read_index)."""
    root = Path(index_path).parent
    return [str(root / s["name"]) for s in read_index(index_path)["shards"]]
