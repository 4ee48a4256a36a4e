"""Command line: `python -m dp_train <subcommand>` (also installed as `dp-train`).

`fit`, `validate` and `test` run through LightningCLI, configured by recipe
YAML files (`--recipe`, repeatable, later files override earlier) and dotted
overrides (`--trainer.max_steps=100 --model.lr_decoder=1e-4`). `predict` and
`export`, and the data commands `make_shards`, `convert` and `synth` (files -> shards), are plain commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import NoReturn


from jsonargparse import lazy_instance
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

from dp_train.shards import ShardIndexError
from dp_train.data.health import DataError
from dp_train.model.config import network_shape
from dp_train.model.weights import safetensors_shape
from dp_train.cli.moved import moved
from dp_train.cli.parse_errors import short_reason
from dp_train.runtime.checkpoint_io import AtomicCheckpointIO, CheckpointError, checkpoint_hparams
from dp_train.cli.checks import check_recipe
from dp_train.cli.recipe_file import RecipeFile
from dp_train.cli.save_config import VersionedSaveConfig
from dp_train.evaluation.guard import GuardedSelection
from dp_train.runtime.preemption import Preempted, PreemptionCheckpoint
from dp_train.runtime.scheduler_signals import SIGNALS
from dp_train.runtime.wandb_run import start_wandb_service, use_stable_wandb_run
from dp_train.utils.commands import OneLineParser

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train from a recipe (--recipe FILE.yaml, repeatable; dotted overrides)",
    "validate": "run the validation set of a recipe on a checkpoint (--ckpt_path)",
    "test": "evaluate a checkpoint on a recipe's evaluation sets (--ckpt_path)",
}
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("dp_train.inference.predict", "metric depth and focal length for images and videos with trained weights"),
    "export": ("dp_train.inference.export",
               "write a training checkpoint's network as Apple-layout .pt / .safetensors, or as ONNX"),
    "make_shards": ("dp_train.convert.make_shards", "your folder of images + depth maps (or photos) -> shards"),
    "convert": ("dp_train.convert.public", "a public benchmark as downloaded (FORMAT: middlebury, ...) -> shards"),
    "synth": ("dp_train.synth.command", "procedural scenes with exact metric depth -> shards"),
    "plan": ("dp_train.cli.plan", "memory per GPU and time of a recipe's training steps, traced without a GPU"),
}
"""Plain subcommands: name -> (module providing `add_arguments(parser)` and `run(args) -> int`, help line)."""

TRAINER_DEFAULTS = {
    "logger": lazy_instance(WandbLogger, project="dp_train", save_dir="runs"),
    "plugins": lazy_instance(AtomicCheckpointIO),
    "callbacks": [lazy_instance(PreemptionCheckpoint)],
}
"""Used where a recipe sets none: wandb (honours WANDB_MODE) and kill-safe checkpoint files. Recipe callbacks are
added to the default ones (save-and-requeue on SIGUSR1/SIGTERM), so the rich progress bar is set in the recipes."""


class RecipeError(Exception):
    """A recipe value that the classes it configures refuse (printed as one `error:` line)."""


class RecipeParser(LightningArgumentParser):
    """Reports a bad recipe or override as one `error:` line naming the key and the innermost reason (no usage
    dump, no union-type report: dp_train/cli/parse_errors.py)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print the error on one line and exit with status 2."""
        if not self.exit_on_error:
            super().error(message, ex)
        one_line = short_reason(str(message))
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {one_line} (see `{prog} --help`)\n")
        self.exit(2)


class DepthProCLI(LightningCLI):
    """LightningCLI with `--recipe` as the config-file flag and validation reports around `fit`."""

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        """Every subcommand's parser, with `--recipe` (alias `-c`) as its config-file flag."""
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c", "--recipe", action=RecipeFile,
            help="recipe YAML; repeatable, later files override earlier ones (mappings such as model.network key by key)",
        )
        return parser

    def _parse_ckpt_path(self) -> None:
        """With `--ckpt_path` (a file or a sharded directory), the checkpoint decides the network's shape
        (`model.preset` and the shape fields of `model.network`: its weights have that shape) and nothing else. The
        recipe's other `model` values stand (Lightning would replace them all with the checkpoint's, e.g. an
        evaluation recipe's `boundary_metrics`), and `model.init_from` is dropped: the weights come from the
        checkpoint, and the file a training run started from need not exist where its checkpoint is evaluated. An
        unreadable checkpoint is one error line."""
        config = self.config.get(self.config.get("subcommand") or "")
        path = config.get("ckpt_path") if config is not None else None
        if not path or not Path(path).exists():
            return
        take_network_shape(config.model, network_shape(checkpoint_hparams(path)))
        config.model.init_from = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Options of our own next to the trainer/model/data groups."""
        parser.add_argument(
            "--report_validation", type=bool, default=False,
            help="fit: run and print the full validation before and after training",
        )
        parser.add_argument(
            "--weights", type=str | None, default=None,
            help="network weights (Apple's depth_pro.pt, a .safetensors or a .ckpt): shorthand for --model.init_from; "
                 "validate and test build the network shape the file records (to score it at another input size, "
                 "give --model.init_from FILE --model.network.vit_img_size PX instead)",
        )

    def instantiate_classes(self) -> None:
        """Build the model, data and trainer. What they refuse (an unknown preset or network field, a weights
        file that is missing or does not fit, conflicting trainer settings) and what does not fit together
        (`check_recipe`) is a `RecipeError`, one line (a refusal inside a union-typed value, e.g. a curriculum
        stage's, reduced to its reason)."""
        try:
            super().instantiate_classes()
            check_recipe(self.subcommand, self.model, self.datamodule, self.trainer)
        except (ValueError, KeyError, FileNotFoundError, MisconfigurationException) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise RecipeError(short_reason(str(message))) from None

    def before_instantiate_classes(self) -> None:
        """`--weights` fills `model.init_from` (evaluating released weights reads like evaluating a checkpoint);
        `validate` and `test` score the network alone, so a recipe's `model.teacher` is not loaded for them."""
        config = self.config[self.subcommand]
        if self.subcommand in ("validate", "test"):
            config.model.teacher = None
        if config.weights:
            config.model.init_from = config.weights
            if self.subcommand in ("validate", "test"):
                take_network_shape(config.model, recorded_shape(config.weights))

    def before_fit(self) -> None:
        """Under `wandb agent`, a checkpoint folder per trial; the wandb service started safe from the
        scheduler's signals; validation of the starting weights (with --report_validation, and for a guarded run
        that does not resume: `GuardedSelection` compares with it). A global batch size that does not fit the run
        is one error line before any work."""
        try:
            self.datamodule.gradient_accumulation(self.trainer)
        except ValueError as err:
            raise RecipeError(str(err)) from None
        separate_sweep_checkpoints(self.trainer)
        start_wandb_service(self.trainer)
        guarded = any(isinstance(c, GuardedSelection) for c in self.trainer.callbacks)
        if self.config.fit.report_validation or (guarded and not self.config.fit.ckpt_path):
            self.trainer.validate(self.model, datamodule=self.datamodule)

    def after_fit(self) -> None:
        """Validation metrics of the trained weights (with --report_validation)."""
        if self.config.fit.report_validation:
            self.trainer.validate(self.model, datamodule=self.datamodule)


def take_network_shape(model, shape: dict) -> None:
    """Give the recipe's `model` the network shape weights record (`preset` and `network`'s shape fields; how
    the network is run, `grad_checkpointing`, stays the recipe's). Nothing changes for an empty shape."""
    if not shape:
        return
    if "preset" in shape:
        model.preset = shape["preset"]
    run_as = {k: v for k, v in (model.network or {}).items() if k == "grad_checkpointing"}
    model.network = shape.get("network", {}) | run_as


def recorded_shape(weights: str) -> dict:
    """The network shape `--weights` records: a training checkpoint's (a .ckpt or a sharded checkpoint folder)
    or an exported .safetensors file's; {} for files that record none (Apple's depth_pro.pt: the recipe's
    shape stands) and for missing files (loading them names the problem)."""
    path = Path(weights)
    if path.suffix == ".safetensors":
        return safetensors_shape(path)
    if path.suffix == ".ckpt" or path.is_dir():
        return network_shape(checkpoint_hparams(path)) if path.exists() else {}
    return {}


def error_line(err: Exception) -> str:
    """The error's message on one line. An exception re-raised from a DataLoader worker carries the worker's
    traceback in its message: its last line is the message."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        return lines[-1].removeprefix(prefix)
    return " ".join(lines)


def separate_sweep_checkpoints(trainer) -> None:
    """Inside a wandb sweep trial, put each ModelCheckpoint's files under `<dirpath>/<run id>`: parallel
    trials of one recipe would otherwise overwrite each other's `last.ckpt` and top-k files."""
    run_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    if not run_id:
        return
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None) is not None:
            callback.dirpath = os.path.join(callback.dirpath, run_id)


def run_lightning(argv: list[str]) -> int:
    """Run a LightningCLI subcommand (`fit`, `validate`, `test`) with the given arguments."""
    from dp_train.data.datamodule import DepthDataModule
    from dp_train.train.module import DepthProModule

    if (old_path := next(filter(None, map(moved, argv)), None)) is not None:
        sys.stderr.write(f"error: {old_path}\n")
        return 1
    if argv[0] == "fit":
        SIGNALS.install()  # from now on SIGUSR1/SIGTERM are recorded and acted on at the first step
    use_stable_wandb_run()
    try:
        DepthProCLI(
            DepthProModule,
            DepthDataModule,
            args=None if argv == sys.argv[1:] else argv,  # LightningCLI warns when given sys.argv twice
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_callback=VersionedSaveConfig,
            parser_kwargs={"prog": "dp_train"},
            parser_class=RecipeParser,
        )
    except (CheckpointError, DataError, RecipeError, ShardIndexError) as err:
        sys.stderr.write(f"error: {error_line(err)}\n")
        return 1
    except Preempted as stop:
        sys.stderr.write(f"{stop}; resume with --ckpt_path last\n")
    finally:
        if not SIGNALS.closed:  # after a preemption save the process keeps ignoring them until it exits
            SIGNALS.uninstall()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: one sub-parser per subcommand (Lightning ones only listed here); a bad argument to
    it or to a plain subcommand is one `error:` line."""
    parser = OneLineParser(prog="dp_train", description="Train, evaluate and run Depth Pro, and make its data: "
                                                        "make_shards, convert and synth write shards from files.")
    subparsers = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name, help_line in LIGHTNING_COMMANDS.items():
        subparsers.add_parser(name, help=f"{help_line}; see `dp_train {name} --help`", add_help=False)
    for name, (module_name, help_line) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_line, description=help_line)
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_lightning(argv)
    args = build_parser().parse_args(argv)
    module_name = SUBCOMMANDS[args.command][0]
    return importlib.import_module(module_name).run(args)
