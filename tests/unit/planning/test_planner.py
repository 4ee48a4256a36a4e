"""The planner's figures against independent ones: a real step's memory as the operating system sees it, FLOPs
counted layer by layer from the layers' shapes, and the arithmetic of what each GPU holds."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from dp_train.model import DepthProConfig, build_depth_pro
from dp_train.planning.gpus import GPUS, utilisation
from dp_train.planning.planner import Planner, Setting, alternatives, best_fitting
from dp_train.planning.trace import fake_network, trace_step
from tests.helpers.cli import child_env
from tests.helpers.paths import REPO

CFG = DepthProConfig.preset("tiny", vit_img_size=128)
TWO_RANKS = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
MEASURED = {"single": [sys.executable], "ddp": TWO_RANKS, "fsdp": TWO_RANKS}


def measured_step_bytes(preset: str, vit_img_size: int, precision: str, checkpointing: bool, strategy: str) -> int:
    """The largest of the ranks' peak resident bytes of a real steady-state step at batch 2 (tests.helpers.step_memory:
    weights, gradients, AdamW state, DDP buckets or FSDP2 shards, activations), with glibc's mmap threshold pinned
    so that the resident set follows the live tensors."""
    env = child_env(MALLOC_MMAP_THRESHOLD_="65536")
    argv = [preset, str(vit_img_size), "2", precision, str(int(checkpointing)), strategy]
    proc = subprocess.run(MEASURED[strategy] + ["-m", "tests.helpers.step_memory", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = [int(line.split()[2]) for line in proc.stdout.splitlines() if line.startswith("peak ")]
    assert len(peaks) == (1 if strategy == "single" else 2), proc.stdout
    return max(peaks)


def planned_step_bytes(cfg: DepthProConfig, precision: str, checkpointing: bool, strategy: str) -> float:
    """The planner's peak per GPU for the same step: batch 2, every parameter trained, one or two GPUs."""
    gpus = 1 if strategy == "single" else 2
    setting = Setting(batch=2, accumulation=1, gpus=gpus, precision=precision, checkpointing=checkpointing,
                      strategy=strategy)
    return Planner(cfg, mode=None).memory(setting).total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's malloc settings")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_planned_step_memory_agrees_with_a_real_steps_within_15_percent(checkpointing):
    """The resident set also holds what the plan does not count (small allocations below the mmap threshold,
    oneDNN scratch, page rounding): on x86-64 CPUs the two came within a few percent; 15 % is the issue's bound.
    (On an H200, depth_pro_l's planned peak was within 4 % of the allocator's: results/gpu_h200.md.)"""
    planned = planned_step_bytes(CFG, "32-true", checkpointing, "single")
    measured = measured_step_bytes("tiny", 128, "32-true", checkpointing, "single")
    assert abs(planned - measured) <= 0.15 * measured, (planned, measured)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's malloc settings")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_planned_memory_per_rank_under_ddp_and_fsdp_agrees_with_two_real_ranks_within_15_percent(strategy):
    """Over 2 ranks (gloo) the `small` network (68 M parameters, 512² input), whose weights, gradients and AdamW
    state outweigh its activations, as depth_pro_l's do at 1536² with checkpointing: DDP adds a bucket copy of
    the gradients, FSDP2 holds half of the weights, gradients and AdamW state plus the bf16 blocks it gathers.
    Forgetting either term puts the plan 18 % (DDP) or 45 % (FSDP2) off the measured peak."""
    cfg = DepthProConfig.preset("small", vit_img_size=128)
    planned = planned_step_bytes(cfg, "bf16-mixed", True, strategy)
    measured = measured_step_bytes("small", 128, "bf16-mixed", True, strategy)
    assert abs(planned - measured) <= 0.15 * measured, (planned, measured)


def layer_flops(network: nn.Module, image: torch.Tensor) -> tuple[int, int, int]:
    """Forward FLOPs counted from each layer's shapes (2 per multiply-add): linear layers, convolutions and
    transposed convolutions; attention's two matrix products; and those of the layers whose input needs no
    gradient (the patch embeddings, which see the image, and the FOV head's convolution of the detached
    low-resolution features)."""
    totals = {"layers": 0, "attention": 0, "no_input_gradient": 0}

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            totals["layers"] += 2 * output.numel() * module.in_features
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
            spatial = output if isinstance(module, nn.Conv2d) else inputs[0]
            flops = 2 * kernel * (spatial.numel() // spatial.shape[1]) * module.out_channels
            totals["layers"] += flops
            if not inputs[0].requires_grad:
                totals["no_input_gradient"] += flops
        elif hasattr(module, "qkv"):  # a timm Attention: softmax(QK^T)V over (batch, tokens, width)
            batch, tokens, width = inputs[0].shape
            totals["attention"] += 4 * batch * tokens * tokens * width

    handles = [m.register_forward_hook(count) for m in network.modules()]
    network(image)
    for handle in handles:
        handle.remove()
    return totals["layers"], totals["attention"], totals["no_input_gradient"]


def test_counted_flops_agree_with_the_layers_shapes():
    """Backward costs twice a layer's forward (input and weight gradients), once where the input needs no
    gradient, and 2.5 times attention's (five matrix products against two): the trace's
    count is that, to the FLOP, for a network whose parameters all train."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    traced = trace_step(fake_network(CFG, mode), 1, "32-true", False, mode).flops
    torch.manual_seed(0)
    layers, attention, no_input_gradient = layer_flops(build_depth_pro(CFG),
                                                       torch.rand(1, 3, CFG.img_size, CFG.img_size))
    assert traced == 3 * layers - no_input_gradient + 3.5 * attention


RECOMPUTE_SHARE = 14.1 / 58.3
"""depth_pro_l's recomputed TFLOP per image under checkpointing over its forward + backward (results/gpu_h200.md)."""


def test_planned_step_times_reproduce_every_h200_step_eager_and_compiled_within_15_percent():
    """The shares the planner times steps with (by per-GPU batch, checkpointing and compiling) give back every
    step the H200 measured, both runs and both precisions, within the issue's 15 %: a compiled recipe is not
    planned at eager speed (17-33 % slower from batch 2) nor an eager one at compiled speed."""
    rows = [row for run in sorted((REPO / "results" / "gpu").glob("h200_run*.json"))
            for row in json.loads(run.read_text())["steps"] if "step_s" in row]
    assert {row["compile"] for row in rows} == {False, True} and len(rows) >= 20
    for row in rows:
        counted = row["tflops"] * row["step_s"] * (1 + RECOMPUTE_SHARE * row["ckpt"])
        planned = counted / (GPUS["H200-141GB"].rate(row["precision"]) * utilisation(row["batch"], row["ckpt"],
                                                                                     row["compile"]))
        assert abs(planned - row["step_s"]) <= 0.15 * row["step_s"], row


def test_memory_parts_follow_the_strategy():
    """DDP holds a copy of the gradients in its buckets; FSDP2 over 8 GPUs holds an eighth of the weights,
    gradients and AdamW state plus the units it gathers; checkpointing lowers activations, not the rest."""
    planner = Planner(CFG)
    ddp = Setting(batch=2, accumulation=1, gpus=8, precision="32-true", checkpointing=False, strategy="ddp")
    one = planner.memory(ddp.replace(strategy="auto", gpus=1))
    assert planner.memory(ddp).ddp_buckets == one.gradients == 4 * planner.trainable_count
    fsdp = planner.memory(ddp.replace(strategy="fsdp"))
    assert fsdp.optimizer == 8 * planner.trainable_count / 8
    assert fsdp.total < planner.memory(ddp).total
    checkpointed = planner.memory(ddp.replace(checkpointing=True))
    assert checkpointed.activations < planner.memory(ddp).activations
    assert checkpointed.parameters == planner.memory(ddp).parameters


def test_frozen_parts_and_lora_are_planned_as_the_run_trains_them():
    """A run that freezes the decoder, or trains LoRA factors instead of the encoders, is planned with the gradients
    and AdamW state of what it trains (the count the run's first line gives): fewer of both than full
    fine-tuning; the frozen weights are still held."""
    from dp_train.train.trainable import prepare_trainable, trainable_summary

    full = Planner(CFG)
    setting = Setting(batch=1, accumulation=1, gpus=1, precision="32-true", checkpointing=False, strategy="auto")
    lora = {"rank": 4, "alpha": 8.0, "encoders": ["patch_encoder", "image_encoder"]}
    for freeze, adapt in ((["decoder"], None), (["heads"], lora)):
        planner = Planner(CFG, freeze=freeze, lora=adapt)
        real = build_depth_pro(CFG)
        prepare_trainable(real, "depth", True, freeze, dict(adapt) if adapt else None)
        assert planner.trainable_count == sum(p.numel() for p in real.parameters() if p.requires_grad)
        assert f"{planner.trainable_count / 1e6:.2f} M" in trainable_summary(real)
        assert planner.memory(setting).optimizer == 8 * planner.trainable_count < full.memory(setting).optimizer
        assert planner.memory(setting).parameters >= full.memory(setting).parameters


def test_a_setting_that_does_not_fit_is_answered_with_the_fastest_that_does():
    """On a GPU too small for the recipe's step, the answer keeps the global batch and fits; none is offered
    when even the smallest step does not fit."""
    planner = Planner(CFG)
    setting = Setting(batch=4, accumulation=2, gpus=2, precision="32-true", checkpointing=False, strategy="ddp")
    need = planner.memory(setting).total
    small = GPUS["A100-40GB"].__class__("small", need / 2**30 * 0.8, {"32-true": 100.0})
    best = best_fitting(planner, setting, small, 0.3)
    assert best is not None and planner.fits(best, small) and best.global_batch == setting.global_batch
    assert all(s.global_batch == setting.global_batch for s in alternatives(setting))
    tiny = small.__class__("tiny", 0.001, {"32-true": 100.0})
    assert best_fitting(planner, setting, tiny, 0.3) is None
