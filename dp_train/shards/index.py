"""A shard set's index (`index.json`): its shards, their sample counts, and the checks that it is genuine."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from dp_train.shards.sample import SCHEMA_VERSION


class ShardIndexError(ValueError):
    """An unreadable or inconsistent shard index; the message starts with its path."""


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
