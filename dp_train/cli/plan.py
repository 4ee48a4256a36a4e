"""`python -m dp_train plan --recipe R.yaml [--gpu A100-40GB] [--gpus N]`: before renting GPUs, what a recipe's
training step needs per GPU (parameters, gradients, AdamW state, DDP buckets, activations), its FLOPs, time per
step and for the whole run at a measured (or given) utilisation, whether it fits each GPU and, when it does not
(or a faster setting would), the nearest setting that does with the same global batch.

The network is traced, not run (dp_train/planning): about a minute on a CPU for depth_pro_l. Memory was within 4 %
of an H200's measured peak for depth_pro_l at 1536² (compiled steps held up to 7 % less); time assumes the
utilisation given (default: what that H200 reached at the same per-GPU batch and checkpointing, compiled or eager as
the recipe runs) and that communication overlaps compute.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from dp_train.cli.recipe_file import check_yaml, merged
from dp_train.model import DepthProConfig
from dp_train.planning.gpus import DEFAULT_GPUS, GPUS, USABLE_FRACTION, utilisation_range
from dp_train.planning.planner import GIB, Planner, Setting, best_fitting


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `plan`."""
    parser.add_argument("--recipe", action="append", required=True, help="recipe file (repeatable, merged in order)")
    parser.add_argument("--gpu", action="append", choices=sorted(GPUS), help=f"default: {', '.join(DEFAULT_GPUS)}")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs in all (default: the recipe's devices x nodes)")
    parser.add_argument("--utilisation", type=float, default=None,
                        help="share of the GPU's peak rate a step achieves (default: as measured on an H200 at the "
                             "setting's per-GPU batch, checkpointing and compiling, 0.18 to 0.39)")


def read_recipes(paths: list[str]) -> dict[str, Any]:
    """The recipes merged in order as `fit` merges them (mappings key by key, lists replaced)."""
    settings: dict[str, Any] = {}
    for path in paths:
        check_yaml(path)
        with open(path, encoding="utf-8") as fh:
            settings = merged(settings, yaml.safe_load(fh))
    return settings


def setting_of(recipe: dict[str, Any], gpus: int | None) -> Setting:
    """The recipe's step: per-GPU batch, accumulation for its global batch, GPUs, precision, checkpointing,
    strategy ('fsdp' for Lightning's ModelParallelStrategy) and regional compile (`model.compile`)."""
    trainer, model, data = recipe.get("trainer") or {}, recipe.get("model") or {}, recipe.get("data") or {}
    devices = trainer.get("devices", 1)
    count = gpus or (devices if isinstance(devices, int) else 1) * trainer.get("num_nodes", 1)
    batch = data.get("batch_size", 1)
    global_batch = data.get("global_batch_size") or batch * count
    if global_batch % (batch * count):
        raise ValueError(f"data.global_batch_size={global_batch} is not a multiple of data.batch_size={batch} x "
                         f"{count} GPUs")
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, dict):
        strategy = "fsdp" if "ModelParallel" in str(strategy.get("class_path")) else "ddp"
    return Setting(batch=batch, accumulation=global_batch // (batch * count), gpus=count,
                   precision=str(trainer.get("precision", "32-true")),
                   checkpointing=bool((model.get("network") or {}).get("grad_checkpointing", False)),
                   strategy="ddp" if strategy == "ddp" or count > 1 and strategy == "auto" else strategy,
                   compiled=bool(model.get("compile", False)))


def describe(setting: Setting) -> str:
    """One line: batch x GPUs x accumulation, precision, checkpointing, strategy, compiled or eager."""
    return (f"batch {setting.batch}/GPU x {setting.gpus} GPU x {setting.accumulation} accumulated = "
            f"{setting.global_batch}, {setting.precision}, act. ckpt {'on' if setting.checkpointing else 'off'}, "
            f"{setting.strategy}, {'compiled' if setting.compiled else 'eager'}")


def memory_line(planner: Planner, setting: Setting) -> str:
    """Peak memory per GPU by part, in GiB."""
    memory = planner.memory(setting)
    parts = [("parameters", memory.parameters), ("gradients", memory.gradients), ("AdamW", memory.optimizer),
             ("DDP buckets", memory.ddp_buckets), ("activations", memory.activations)]
    shown = " + ".join(f"{name} {value / GIB:.1f}" for name, value in parts if value)
    return f"{shown} = {memory.total / GIB:.1f} GiB"


def gpu_rows(planner: Planner, setting: Setting, steps: int, gpu_names: list[str],
             utilisation: float | None) -> list[str]:
    """A Markdown table: per GPU model, fits or not, seconds per step, hours for the run, and the fastest
    setting that fits when it is not the recipe's own."""
    rows = ["| GPU | fits | s / step | run (h) | fastest setting that fits, same global batch |",
            "|---|---|---|---|---|"]
    for name in gpu_names:
        gpu = GPUS[name]
        own = setting.replace(precision="16-mixed") if gpu.rate(setting.precision) is None else setting
        seconds = planner.step_seconds(own, gpu, utilisation)
        best = best_fitting(planner, own, gpu, utilisation)
        note = "" if own == setting else "16-mixed (no bf16 on this GPU); "
        better = "-" if best == own else (describe(best) + f": {planner.step_seconds(best, gpu, utilisation):.2f} s"
                                          if best else "none: more GPUs or a smaller network")
        rows.append(f"| {name} ({gpu.memory_gib:.0f} GiB) | {note}{'yes' if planner.fits(own, gpu) else 'no'} | "
                    f"{seconds:.2f} | {seconds * steps / 3600:.1f} | {better} |")
    return rows


def plan_text(recipe: dict[str, Any], names: list[str], gpus: int | None, utilisation: float | None) -> str:
    """The whole plan of one merged recipe."""
    model, data = recipe.get("model") or {}, recipe.get("data") or {}
    network = {k: v for k, v in (model.get("network") or {}).items() if k not in DepthProConfig.RUNTIME_FIELDS}
    cfg = DepthProConfig.preset(model.get("preset", "depth_pro_l"), **network)
    if data.get("image_size", cfg.img_size) != cfg.img_size:
        raise ValueError(f"data.image_size={data['image_size']} is not the network's input {cfg.img_size}")
    setting = setting_of(recipe, gpus)
    planner = Planner(cfg, model.get("mode", "depth"), model.get("freeze_vit_norms", True), model.get("freeze"),
                      model.get("lora"))
    steps = int((recipe.get("trainer") or {}).get("max_steps", 0))
    flops = planner.flops_per_sample(setting.precision, setting.checkpointing)
    lines = [f"network: {model.get('preset', 'depth_pro_l')}, {planner.parameter_count / 1e6:.0f} M parameters "
             f"({planner.trainable_count / 1e6:.0f} M trained), input {cfg.img_size}x{cfg.img_size}",
             f"step: {describe(setting)}; {steps:,} steps",
             f"FLOPs per image (forward + backward{' + recomputation' if setting.checkpointing else ''}): "
             f"{flops / 1e12:.1f} TFLOP",
             f"memory per GPU: {memory_line(planner, setting)} (fits: at most {USABLE_FRACTION:.0%} of the GPU)",
             f"time: at {share_text(utilisation, setting.compiled)} of each GPU's peak dense rate, compute only", ""]
    return "\n".join(lines + gpu_rows(planner, setting, steps, names, utilisation))


def share_text(utilisation: float | None, compiled: bool) -> str:
    """How the plan's times were reached: the given share, or the measured share by per-GPU batch."""
    if utilisation is not None:
        return f"{utilisation:.0%}"
    low, high = utilisation_range(compiled)
    return (f"the share an H200 reached {'compiled' if compiled else 'eagerly'} at the same per-GPU batch and "
            f"checkpointing ({low:.0%} to {high:.0%})")


def run(args: argparse.Namespace) -> int:
    """Print the plan; a bad recipe or setting is one `error:` line."""
    try:
        print(plan_text(read_recipes(args.recipe), args.gpu or list(DEFAULT_GPUS), args.gpus, args.utilisation))
    except (TypeError, ValueError, KeyError, OSError) as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    return 0
