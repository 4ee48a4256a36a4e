"""Checks across a recipe's objects, before any work: values each class accepts alone but not together.

A value out of range on its own is refused by its class's constructor (`dp_train/utils/ranges.py`). Each failure is
one ValueError naming the recipe key, which the CLI prints as one `error:` line.
"""

from __future__ import annotations

import os
from typing import Any

from dp_train.train.curriculum import CurriculumCallback
from dp_train.data.samples import check_source_use
from dp_train.evaluation.guard import GuardedSelection
from dp_train.model.parallelize import refuse_beside_fsdp


def check_recipe(subcommand: str | None, model: Any, datamodule: Any, trainer: Any) -> None:
    """Raise one ValueError for the first inconsistency of the instantiated recipe."""
    check_image_size(model, datamodule)
    check_weights("data.train_sources", datamodule.train_sources)
    for key in ("train_sources", "val_sources", "test_sources", "guard_sources"):
        check_shard_lists(f"data.{key}", getattr(datamodule, key))
    for key in ("train_sources", "val_sources", "test_sources"):
        check_names(f"data.{key}", getattr(datamodule, key))
    check_names("data.guard_sources", datamodule.sources("val"))  # one validation stream: names unique across both
    check_sources_for(subcommand, datamodule)
    check_guard(datamodule, trainer.callbacks)
    refuse_beside_fsdp(trainer.strategy, trainer.callbacks, getattr(model, "hparams", {}).get("lora"))
    if subcommand == "fit":
        check_checkpoint_dirs(trainer)
        check_source_use("data.train_sources", datamodule.train_sources, getattr(model, "training_use", "depth"))
        for callback in trainer.callbacks:
            if isinstance(callback, CurriculumCallback):
                callback.check_mixtures(datamodule.source_names("train"))


NEEDED_SOURCES = {"fit": ("train_sources", "training"), "validate": ("val_sources", "validation"),
                  "test": ("test_sources", "test")}
"""Subcommand -> the data key it reads and what its sources are called."""


def check_sources_for(subcommand: str | None, datamodule: Any) -> None:
    """`fit`, `validate` and `test` each need their own sources: without, `test` would fail in the data loader
    and `validate` would end with no metrics and exit status 0."""
    key, kind = NEEDED_SOURCES.get(subcommand or "", (None, None))
    if key and not getattr(datamodule, key):
        raise ValueError(f"data.{key} is empty: {subcommand} needs at least one {kind} source")


def check_guard(datamodule: Any, callbacks: list) -> None:
    """Guard sets are never trained on (a guard set that is also a training source measures nothing), and
    `GuardedSelection` has both kinds of validation source to compare."""
    trained = {url for source in datamodule.train_sources for url in source.shard_urls()}
    for source in datamodule.guard_sources:
        if trained & set(source.shard_urls()):
            raise ValueError(f"data.guard_sources: {source.name!r} reads shards that data.train_sources trains on: "
                             "a guard set must be one the run never trains on")
    if any(isinstance(c, GuardedSelection) for c in callbacks) and not (datamodule.val_sources
                                                                           and datamodule.guard_sources):
        raise ValueError("trainer.callbacks: GuardedSelection needs data.val_sources (in-domain) and "
                         "data.guard_sources (sets the run never trains on)")


def check_image_size(model: Any, datamodule: Any) -> None:
    """The data must be cut to the network's input side (4 x its ViT input), or the first batch fails."""
    config = model.net.config
    if datamodule.image_size != config.img_size:
        raise ValueError(f"data.image_size={datamodule.image_size} does not fit the network, which takes "
                         f"{config.img_size} px (4 x model.network.vit_img_size={config.vit_img_size})")


def check_names(key: str, sources: list) -> None:
    """Source names are unique: metrics, logs and the resume position are keyed by them."""
    names = [source.name for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{key}: more than one source is named {repeated[0]!r}")


def check_shard_lists(key: str, sources: list) -> None:
    """Every source lists at least one shard (brace patterns expanded, local index files read; whether the shards
    exist is checked when the data is set up)."""
    for source in sources:
        try:
            source.shard_urls()
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None


def check_weights(key: str, sources: list) -> None:
    """Mixing weights are finite, >= 0 and not all 0."""
    for source in sources:
        if not 0 <= source.weight < float("inf"):
            raise ValueError(f"{key}: source {source.name!r} has weight {source.weight}: weights must be >= 0")
    if sources and not any(source.weight > 0 for source in sources):
        raise ValueError(f"{key}: every source has weight 0")


def check_checkpoint_dirs(trainer: Any) -> None:
    """A checkpoint folder that is a file would fail at the first save, after the training it was to keep."""
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and "://" not in str(dirpath) and os.path.isfile(dirpath):
            raise ValueError(f"trainer.callbacks: {type(callback).__name__} dirpath {dirpath} is a file, not a folder")
