"""Class paths of the flat layout before the packages (dp_train 0.1, up to commit a8ddb31), and where they live now.

Recipes name classes by module path (`class_path: dp_train.curriculum.CurriculumCallback`). A recipe or command
line written for the flat layout is refused in one line naming the new path, rather than with jsonargparse's
"No module named" (which does not say where the class went)."""

from __future__ import annotations

import re
from typing import Any

MOVED_MODULES = {
    "dp_train.cli": "dp_train.cli.main",
    "dp_train.curriculum": "dp_train.train.curriculum",
    "dp_train.data.schema": "dp_train.shards",
    "dp_train.evaluation": "dp_train.evaluation.per_image",
    "dp_train.exif": "dp_train.utils.exif",
    "dp_train.export": "dp_train.inference.export",
    "dp_train.images": "dp_train.inference.images",
    "dp_train.metrics": "dp_train.evaluation.metrics",
    "dp_train.module": "dp_train.train.module",
    "dp_train.paper_tables": "dp_train.evaluation.paper_tables",
    "dp_train.parse_errors": "dp_train.cli.parse_errors",
    "dp_train.predict": "dp_train.inference.predict",
    "dp_train.ranges": "dp_train.utils.ranges",
    "dp_train.recipe_checks": "dp_train.cli.checks",
    "dp_train.recipe_file": "dp_train.cli.recipe_file",
    "dp_train.report": "dp_train.evaluation.report",
    "dp_train.saveconfig": "dp_train.cli.save_config",
    "dp_train.schedules": "dp_train.train.schedules",
    "dp_train.sharded": "dp_train.runtime.sharded",
    "dp_train.slurm": "dp_train.runtime.slurm",
    "dp_train.visualize": "dp_train.utils.visualize",
}
"""Module -> module, for every module that moved whole."""
MOVED_CLASSES = {
    "dp_train.resume.AtomicModelParallelStrategy": "dp_train.runtime.strategy.AtomicModelParallelStrategy",
    "dp_train.resume.AtomicCheckpointIO": "dp_train.runtime.checkpoint_io.AtomicCheckpointIO",
    **{f"{module}.PreemptionCheckpoint": "dp_train.runtime.preemption.PreemptionCheckpoint"
       for module in ("dp_train.slurm", "dp_train.runtime.slurm")},
    **{f"{module}.{name}": f"dp_train.evaluation.{new}.{name}"
       for module in ("dp_train.metrics", "dp_train.evaluation.metrics")
       for new, names in (("depth_accuracy", ("DepthMetrics", "AlignedDepthMetrics")),
                          ("boundary", ("BoundaryF1", "BoundaryRecall")), ("focal", ("FocalMetrics",)))
       for name in names},
}
"""Class -> class, for the classes of modules that were split (runtime/slurm.py and evaluation/metrics.py were
split after the package layout: their old 0.2 paths are here too)."""
_CLASS_PATH = re.compile(r"dp_train(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def moved(text: str) -> str | None:
    """`OLD moved to NEW: ...` for the first flat-layout class path in `text`, or None."""
    for path in _CLASS_PATH.findall(text):
        module, _, name = path.rpartition(".")
        new = MOVED_CLASSES.get(path) or (f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else None)
        if new:
            return f"{path} moved to {new} (the package layout of dp_train 0.2): update the class path"
    return None


def moved_in(tree: Any) -> str | None:
    """`moved(...)` for the first string anywhere in a parsed recipe (nested dicts and lists) that names one."""
    if isinstance(tree, str):
        return moved(tree)
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else ()
    return next((found for found in map(moved_in, values) if found), None)
