#!/usr/bin/env python
"""The prepared device check: a training step of the real network at full size on one GPU, in one run.

    python tools/bench_gpu.py --out results/gpu                    # depth_pro_l at 1536², ≤ ~8 min on one GPU
    python tools/bench_gpu.py --preset tiny --vit-img-size 128 --out /tmp/check   # CPU mode (CI runs it)

Measures, writing `bench_gpu.json` and `bench_gpu.md` into `--out` after every figure (a run cut short keeps
what it measured):
- where attention goes: what timm's ViT blocks dispatch to (fused SDPA or not, the kernels a profiler sees);
- a training step (forward, float32 loss, backward, gradient clipping, AdamW) at per-GPU batch 1 / 2 / 4 x
  activation checkpointing off / on, in bf16-mixed and in 16-mixed (fp16 autocast with a GradScaler, what a
  V100 runs): seconds per step, images/s, peak allocated memory, out-of-memory recorded as such;
- the levers one at a time against that step: unfused attention, foreach vs fused AdamW, channels_last,
  regional `torch.compile` (each block, `dp_train.model.parallelize`);
- FLOPs of a training step per sample (torch's FlopCounterMode) and the MFU they give at each measured time;
- `predict` latency for one image (network forward, fp32 and bf16);
- a short `fit` of recipes/stage2.yaml layered with a smoke override (one device, synthetic shards rendered on
  the spot or passed with `--shards`, no checkpoint written) whose loss must be finite and fall.
Every section stops starting new configurations when `--budget-s` is spent and says what it skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from bench_gpu_report import markdown
from dp_train.model import DepthProConfig, build_depth_pro
from dp_train.model.parallelize import parallelize
from fit_smoke import run_fit_smoke

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the device check."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="depth_pro_l")
    parser.add_argument("--vit-img-size", type=int, default=None, help="override the preset's ViT input size")
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json / bench_gpu.md")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--precisions", nargs="+", default=None, choices=sorted(PRECISIONS),
                        help="default: bf16-mixed and 16-mixed on a GPU, 32-true on CPU (where autocast is slow)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration (after 2 warm-up)")
    parser.add_argument("--fit-steps", type=int, default=50, help="0: no fit")
    parser.add_argument("--shards", type=Path, default=None, help="an index.json of shards for the fit (else render)")
    parser.add_argument("--levers", nargs="+", default=None, help="levers to measure (default: all of LEVERS)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new configuration after this")
    return parser.parse_args(argv)


class Clock:
    """Seconds left of the run's budget."""

    def __init__(self, budget_s: float) -> None:
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        """Seconds until the budget is spent."""
        return self.end - time.monotonic()


class Report:
    """The figures so far, rewritten to JSON and Markdown after every addition."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.data = out, {"steps": [], "levers": [], "notes": []}

    def add(self, section: str, value) -> None:
        """Append `value` to a list section (or set a scalar one) and write both files."""
        if isinstance(self.data.get(section), list):
            self.data[section].append(value)
        else:
            self.data[section] = value
        (self.out / "bench_gpu.json").write_text(json.dumps(self.data, indent=1))
        (self.out / "bench_gpu.md").write_text(markdown(self.data))


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    """Forget the allocator's peak so the next configuration's is its own."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset (CUDA only; None on CPU)."""
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def environment(device: torch.device) -> dict:
    """The device, library versions and peak dense bf16 rate used for MFU."""
    import lightning
    import timm

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "timm": timm.__version__, "lightning": lightning.__version__,
            "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
            "peak_bf16_tflops": peak_tflops(name)}


def git_commit() -> str:
    """The checkout's commit (and '+dirty' when it has uncommitted changes), or 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=REPO, capture_output=True, text=True)
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_tflops(device_name: str) -> float | None:
    """Datasheet dense bf16 TFLOP/s of known GPUs (V100: its fp16 tensor-core rate), for MFU; None if unknown."""
    table = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "V100": 125.0}
    return next((rate for key, rate in table.items() if key in device_name), None)


def build(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The preset's network with random weights, built directly on `device`."""
    overrides = {"vit_img_size": args.vit_img_size} if args.vit_img_size else {}
    cfg = DepthProConfig.preset(args.preset, **overrides)
    with device:
        return build_depth_pro(cfg)


def attention_dispatch(network: torch.nn.Module, device: torch.device) -> dict:
    """Whether every ViT block takes timm's fused path (F.scaled_dot_product_attention) and which attention
    kernels one forward of a batch-1 image runs, as the profiler names them."""
    fused = sorted({bool(getattr(block.attn, "fused_attn", False)) for vit in network.vits() for block in vit.blocks})
    x = torch.zeros(1, 3, network.img_size, network.img_size, device=device)
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = torch.profiler.profile(activities=activities)
    with torch.no_grad(), autocast(device, reference_precision(device)), profiler:
        network(x)
    names = sorted({e.key for e in profiler.key_averages()
                    if any(k in e.key.lower() for k in ("attention", "flash", "fmha"))})
    return {"timm_fused_attn": fused, "attention_ops_and_kernels": names[:12]}


def reference_precision(device: torch.device) -> str:
    """The precision of the reference step, the levers and the attention probe: bf16-mixed on a GPU, 32-true on
    CPU (bf16 autocast there is emulated and far slower)."""
    return "bf16-mixed" if device.type == "cuda" else "32-true"


def autocast(device: torch.device, precision: str):
    """Autocast to the precision's dtype (nothing for 32-true)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def training_step(network: torch.nn.Module, batch: int, precision: str, optimizer: torch.optim.Optimizer,
                  device: torch.device, channels_last: bool = False) -> Callable[[], None]:
    """One step as `fit` runs it: forward under autocast, a float32 loss, backward (scaled for 16-mixed),
    gradient clipping at 0.2, the optimizer step."""
    x = torch.rand(batch, 3, network.img_size, network.img_size, device=device) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    params = [p for p in network.parameters() if p.requires_grad]

    def step() -> None:
        with autocast(device, precision):
            inverse_depth, fov = network(x)
        loss = inverse_depth.float().abs().mean() + fov.float().abs().mean()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 0.2)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_step(step: Callable[[], None], device: torch.device, steps: int) -> dict:
    """Seconds of the first call (compile happens there), mean seconds per step over `steps` after two
    warm-up calls, and peak memory; {'oom': True} when the device runs out of memory."""
    reset_peak(device)
    try:
        start = time.perf_counter()
        step()
        synchronize(device)
        first = time.perf_counter() - start
        step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
    except torch.OutOfMemoryError:
        return {"oom": True, "peak_gib": peak_gib(device)}
    return {"first_step_s": first, "step_s": (time.perf_counter() - start) / steps, "peak_gib": peak_gib(device)}


def optimizer(network: torch.nn.Module, device: torch.device, fused: bool) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, fused (one kernel for all) or foreach."""
    params = [p for p in network.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5, fused=fused and device.type == "cuda", foreach=not fused or None)


def flops_per_sample(network: torch.nn.Module, device: torch.device) -> float:
    """FLOPs of one training step's forward and backward for one image (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, network.img_size, network.img_size, device=device)
    with FlopCounterMode(display=False) as counter:
        inverse_depth, fov = network(x)
        (inverse_depth.float().mean() + fov.float().mean()).backward()
    network.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def step_matrix(args: argparse.Namespace, network, device, report: Report, clock: Clock, flops: float) -> None:
    """Every precision x checkpointing x per-GPU batch, eager, fused AdamW; larger batches skipped after an OOM."""
    opt = optimizer(network, device, fused=True)
    for precision in args.precisions:
        for ckpt in (False, True):
            parallelize(network, None, activation_checkpointing=ckpt)
            for batch in args.batches:
                if clock.left() < 0:
                    report.add("notes", f"skipped {precision} ckpt={ckpt} batch={batch}: out of time")
                    continue
                figures = time_step(training_step(network, batch, precision, opt, device), device, args.steps)
                report.add("steps", with_rates(dict(precision=precision, ckpt=ckpt, batch=batch, compile=False),
                                               figures, flops))
                if figures.get("oom"):
                    break
    del opt


def with_rates(config: dict, figures: dict, flops: float) -> dict:
    """A row: its configuration, measured figures, images/s and achieved TFLOP/s."""
    row = config | figures
    if "step_s" in figures:
        row["img_per_s"] = config["batch"] / figures["step_s"]
        row["tflops"] = flops * config["batch"] / figures["step_s"] / 1e12
    return row


LEVERS: dict[str, dict[str, bool]] = {
    "reference": {},
    "unfused attention": {"fused_attention": False},
    "foreach AdamW": {"fused_adamw": False},
    "channels_last": {"channels_last": True},
    "reference again": {},
    "regional compile": {"compile": True},
}
"""Changes against the reference step, one row each; the reference is measured twice (its spread is the noise);
compile last, since a compiled block stays compiled (and its graphs assume the weights' memory format: converting
to channels_last after compiling fails an assertion in the compiled decoder, measured on an H200)."""


def lever_rows(args, network, device, report: Report, clock: Clock, flops: float) -> None:
    """Each lever against the reference step (reference precision, checkpointing on, batch 2, fused AdamW and
    fused attention, eager, contiguous memory)."""
    batch = min(2, max(args.batches))
    parallelize(network, None, activation_checkpointing=True)
    for name, lever in LEVERS.items():
        if args.levers is not None and name not in args.levers:
            continue
        if clock.left() < 0:
            report.add("notes", f"skipped lever {name}: out of time")
            continue
        set_fused_attention(network, lever.get("fused_attention", True))
        channels_last = lever.get("channels_last", False)
        network.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if lever.get("compile"):
            parallelize(network, None, activation_checkpointing=True, compile=True)
        opt = optimizer(network, device, fused=lever.get("fused_adamw", True))
        precision = reference_precision(device)
        step = training_step(network, batch, precision, opt, device, channels_last=channels_last)
        figures = time_step(step, device, args.steps)
        row = dict(lever=name, batch=batch, precision=precision, ckpt=True, compile=lever.get("compile", False))
        report.add("levers", with_rates(row, figures, flops))
        del opt


def compiled_matrix(args, network, device, report: Report, clock: Clock, flops: float) -> None:
    """Reference-precision steps of the regionally compiled network (after the compile lever) at every batch x
    checkpointing; larger batches skipped after an OOM."""
    opt = optimizer(network, device, fused=True)
    for ckpt in (True, False):
        parallelize(network, None, activation_checkpointing=ckpt)  # the blocks stay compiled
        for batch in args.batches:
            if clock.left() < 0:
                report.add("notes", f"skipped compiled ckpt={ckpt} batch={batch}: out of time")
                continue
            precision = reference_precision(device)
            figures = time_step(training_step(network, batch, precision, opt, device), device, args.steps)
            report.add("steps", with_rates(dict(precision=precision, ckpt=ckpt, batch=batch, compile=True),
                                           figures, flops))
            if figures.get("oom"):
                break


def set_fused_attention(network: torch.nn.Module, fused: bool) -> None:
    """Route every ViT block's attention through F.scaled_dot_product_attention (fused) or timm's explicit
    softmax(QK^T)V."""
    for vit in network.vits():
        for block in vit.blocks:
            block.attn.fused_attn = fused


def predict_latency(network: torch.nn.Module, device: torch.device, steps: int) -> list[dict]:
    """Seconds to predict one image (the network's forward at batch 1, no gradients), fp32 and bf16."""
    network.eval()
    rows = []
    for precision in dict.fromkeys(("32-true", reference_precision(device))):
        x = torch.rand(1, 3, network.img_size, network.img_size, device=device)

        def forward() -> None:
            with torch.no_grad(), autocast(device, precision):
                network(x)

        rows.append({"precision": precision} | time_step(forward, device, steps))
    network.train()
    return rows


def guarded(report: Report, name: str, work: Callable[[], object]) -> object:
    """Run one section; a failure becomes a note naming the section and the error (its traceback on stderr), so
    that one broken section does not cost the others' figures on a device lent for minutes."""
    try:
        return work()
    except Exception as error:  # noqa: BLE001 - recorded and reported, the run goes on
        traceback.print_exc()
        report.add("notes", f"section {name} failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}")
        return None


def measure_network(args: argparse.Namespace, device: torch.device, report: Report, clock: Clock) -> int:
    """Every section on one network built here (freed on return, before the fit); returns its input size."""
    network = build(args, device)
    report.add("network", {"params": sum(p.numel() for p in network.parameters()), "input": network.img_size})
    guarded(report, "attention", lambda: report.add("attention", attention_dispatch(network, device)))
    flops = guarded(report, "flops", lambda: flops_per_sample(network, device)) or 0.0
    report.add("flops_per_sample", flops)
    guarded(report, "steps", lambda: step_matrix(args, network, device, report, clock, flops))
    guarded(report, "predict", lambda: report.add("predict", predict_latency(network, device, args.steps)))
    guarded(report, "levers", lambda: lever_rows(args, network, device, report, clock, flops))
    if args.levers is None or "regional compile" in args.levers:
        guarded(report, "compiled steps", lambda: compiled_matrix(args, network, device, report, clock, flops))
    return network.img_size


def add_plans(args: argparse.Namespace, device: torch.device, report: Report) -> None:
    """Set the planner's prediction (peak GiB; seconds per step at its measured share of the GPU's peak rate by
    per-GPU batch, checkpointing and compiling) beside every measured step: the same network with every parameter
    trained, one process, no DDP."""
    from dp_train.planning.gpus import GPUS
    from dp_train.planning.planner import GIB, Planner, Setting

    overrides = {"vit_img_size": args.vit_img_size} if args.vit_img_size else {}
    planner = Planner(DepthProConfig.preset(args.preset, **overrides), mode=None, freeze_vit_norms=False)
    name = report.data["environment"]["device"]
    gpu = next((g for key, g in GPUS.items() if key.split("-")[0] in name), None)
    for row in report.data["steps"] + report.data["levers"]:
        setting = Setting(batch=row["batch"], accumulation=1, gpus=1, precision=row["precision"],
                          checkpointing=row["ckpt"], strategy="none", compiled=row["compile"])
        row["planned_gib"] = planner.memory(setting).total / GIB
        row["planned_step_s"] = planner.step_seconds(setting, gpu) if gpu else None
    report.add("notes", f"planned: dp_train/planning, time at the measured share by batch of "
                        f"{gpu.name if gpu else 'an unknown GPU'}'s peak rate, every parameter trained, one process")


def main() -> None:
    """Run every section in order of value, within the budget."""
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.precisions = args.precisions or (["bf16-mixed", "16-mixed"] if device.type == "cuda" else ["32-true"])
    clock, report = Clock(args.budget_s), Report(args.out)
    report.add("environment", environment(device) | {"preset": args.preset, "argv": sys.argv[1:]})
    size = measure_network(args, device, report, clock)
    reset_peak(device)
    guarded(report, "plans", lambda: add_plans(args, device, report))
    if args.fit_steps:
        guarded(report, "fit", lambda: report.add("fit", run_fit_smoke(args, device, size)))
    print(markdown(report.data))


if __name__ == "__main__":
    main()
