"""Benchmark the Depth Pro network: forward and forward+backward time and peak memory.

Each configuration runs in a fresh subprocess so that its peak memory is its
own (CUDA: `max_memory_allocated`; CPU: the process's peak resident set).

    python tools/bench_model.py --preset tiny --device cpu
    python tools/bench_model.py --preset depth_pro_l --device cuda --dtype bf16 --batch-size 2 --matrix

`--matrix` sweeps activation checkpointing and torch.compile; figures are
printed as a Markdown table (times in seconds per step, images/s).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from dp_train.model import DepthProConfig, build_depth_pro
from dp_train.model.parallelize import parallelize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vit-img-size", type=int, default=None, help="override the preset's ViT input size")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype (fp32: none)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each block (regional: dp_train.model.parallelize)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--matrix", action="store_true", help="sweep checkpointing x compile, one process each")
    parser.add_argument("--json", action="store_true", help="print one JSON result line (used by --matrix)")
    return parser.parse_args(argv)


def synchronize(device: str) -> None:
    """Wait for queued device work so wall-clock times are real."""
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_mib(device: str) -> float:
    """Peak memory of this process so far: CUDA allocator peak, or peak RSS on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step, args: argparse.Namespace) -> float:
    """Mean seconds per call of `step` after warm-up."""
    for _ in range(args.warmup):
        step()
    synchronize(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(args.device)
    return (time.perf_counter() - start) / args.steps


def run_single(args: argparse.Namespace) -> dict:
    """Measure one configuration in this process."""
    overrides = {"vit_img_size": args.vit_img_size} if args.vit_img_size else {}
    cfg = DepthProConfig.preset(args.preset, **overrides)
    model = parallelize(build_depth_pro(cfg).to(args.device), None,
                        activation_checkpointing=args.grad_checkpointing, compile=args.compile)
    x = torch.rand(args.batch_size, 3, cfg.img_size, cfg.img_size, device=args.device) * 2 - 1
    autocast = torch.autocast(args.device, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")

    def forward() -> None:
        with torch.no_grad(), autocast:
            model(x)

    def forward_backward() -> None:
        with autocast:
            cid, fov = model(x)
            loss = cid.float().mean() + fov.float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    forward_s = time_steps(forward, args)
    model.train()
    train_s = time_steps(forward_backward, args)
    return {
        "preset": args.preset,
        "input": cfg.img_size,
        "batch": args.batch_size,
        "dtype": args.dtype,
        "ckpt": args.grad_checkpointing,
        "compile": args.compile,
        "forward_s": forward_s,
        "train_step_s": train_s,
        "train_img_per_s": args.batch_size / train_s,
        "peak_mib": peak_memory_mib(args.device),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def run_matrix(args: argparse.Namespace) -> list[dict]:
    """Run every checkpointing x compile combination in its own subprocess."""
    base = [a for a in sys.argv[1:] if a not in ("--matrix", "--grad-checkpointing", "--compile")]
    results = []
    for ckpt in (False, True):
        for compiled in (False, True):
            extra = ["--grad-checkpointing"] * ckpt + ["--compile"] * compiled + ["--json"]
            out = subprocess.run([sys.executable, __file__, *base, *extra], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"ckpt={ckpt} compile={compiled} failed: {out.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                continue
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def print_table(rows: list[dict], device: str) -> None:
    """Markdown table of the results."""
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}, torch {torch.__version__}")
    print("| preset | params (M) | input | batch | dtype | ckpt | compile | forward s | fwd+bwd s | img/s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['params_m']:.1f} | {r['input']} | {r['batch']} | {r['dtype']} | {r['ckpt']} | "
            f"{r['compile']} | {r['forward_s']:.3f} | {r['train_step_s']:.3f} | {r['train_img_per_s']:.2f} | "
            f"{r['peak_mib']:.0f} |"
        )


def main() -> None:
    """Run the benchmark and print its figures."""
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available")
    if args.matrix:
        print_table(run_matrix(args), args.device)
    elif args.json:
        print(json.dumps(run_single(args)))
    else:
        print_table([run_single(args)], args.device)


if __name__ == "__main__":
    main()
