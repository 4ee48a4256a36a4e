"""`--recipe FILE`: jsonargparse's config-file option, mappings merged across recipes, a broken file named.

jsonargparse applies config files in order, each value replacing the earlier one. For a mapping-valued key
(`model.network` is a plain dict) that drops everything an earlier recipe set: a second recipe with only
`model.network: {grad_checkpointing: true}` silently lost the first recipe's network shape. Here a mapping in
a later recipe updates the earlier mapping, key by key and recursively, like the nested namespaces (`model`,
`trainer`) already are; lists and other values still replace. To drop an earlier mapping, set the key to
null first.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from jsonargparse import ActionConfigFile

from dp_train.cli.moved import moved_in


class RecipeFile(ActionConfigFile):
    """Applies one recipe file on top of the earlier ones (see the module docstring)."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        """Parse `values` (a recipe path) into `cfg`, merging mapping values into the earlier recipes' ones."""
        check_yaml(values)
        earlier = {key: cfg.get(key) for key in cfg.keys() if isinstance(cfg.get(key), dict)}
        super().__call__(parser, cfg, values, option_string)
        for key, before in earlier.items():
            after = cfg.get(key)
            if isinstance(after, dict) and after != before:
                cfg[key] = merged(before, after)


def check_yaml(path: str) -> None:
    """Raise TypeError (reported by the parser as one line) naming `path` when it is no readable YAML mapping
    (jsonargparse's own message names neither the file nor which of several recipes it is) or when it names a
    class by its path before the package layout (dp_train/cli/moved.py)."""
    if not os.path.isfile(path):  # a missing file, or settings given inline: jsonargparse tells which
        return
    try:
        with open(path, encoding="utf-8") as fh:
            content = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise TypeError(f"--recipe {path}: {' '.join(reason.split())}") from None
    if not isinstance(content, dict):
        what = "nothing" if content is None else f"a {type(content).__name__}"
        raise TypeError(f"--recipe {path}: holds {what}, not a mapping of settings")
    if (old_path := moved_in(content)) is not None:
        raise TypeError(f"--recipe {path}: {old_path}")


def merged(base: dict, update: dict) -> dict:
    """`base` updated by `update`, recursing where both hold a mapping under the same key."""
    result = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merged(result[key], value) if both else value
    return result
