"""Writing shards: samples to tar files of a bounded size and an index that lists them, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from webdataset import TarWriter

from dp_train.shards.encode import check_choice, encode_sample
from dp_train.shards.sample import DEPTH_FORMATS, IMAGE_FORMATS, KEY_PATTERN, SCHEMA_VERSION, Sample

_TAR_MTIME = 0.0  # fixed member time: the same samples give byte-identical shards


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
        check_choice("depth_format", depth_format, DEPTH_FORMATS)
        check_choice("image_format", image_format, IMAGE_FORMATS)
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
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key) or "json" not in raw:
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
