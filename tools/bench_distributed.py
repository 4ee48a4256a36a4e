"""Benchmark distributed training configurations: samples/s and peak memory per process.

Each configuration is a real `python -m dp_train fit` run (synthetic shards, the given preset
and input size) with one setting changed: the strategy (single process, DDP, FSDP2 through
ModelParallelStrategy), FSDP's parameter dtype (bf16 compute vs fp32) and activation
checkpointing. Throughput is the median of the module's logged `train/samples_per_s` over the
steps after `--warmup`; memory is the peak resident set (CPU) or peak allocated CUDA memory of
the busiest process. All runs share one process launch path, so ratios between rows are the
figures to read; absolute values depend on the machine (and on CPU, on what else it runs).

    python tools/bench_distributed.py                         # tiny preset, 512 px, CPU, 2 processes
    python tools/bench_distributed.py --accelerator gpu --devices 8 --preset depth_pro_l --size 1536
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
import yaml

from dp_train.synth import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]


class PeakMemory(L.Callback):
    """Write this process's peak memory (CUDA allocations on GPU, resident set on CPU) at the end of training."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            peak_mib = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        else:
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        (self.out_dir / f"memory_rank{trainer.global_rank}.json").write_text(json.dumps({"peak_mib": peak_mib}))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="model preset (tiny, small, base, depth_pro_l)")
    parser.add_argument("--size", type=int, default=512, help="network input side (4 x vit_img_size)")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", type=int, default=2, help="processes for the DDP/FSDP rows")
    parser.add_argument("--batch-size", type=int, default=1, help="per process")
    parser.add_argument("--steps", type=int, default=12, help="training steps per configuration")
    parser.add_argument("--warmup", type=int, default=4, help="steps excluded from the throughput median")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "dp_train_bench_dist")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    return parser.parse_args(argv)


def configurations(args: argparse.Namespace) -> dict[str, dict]:
    """Row label -> (devices, strategy, model overrides)."""
    n = args.devices
    fsdp = {"class_path": "dp_train.runtime.strategy.AtomicModelParallelStrategy",
            "init_args": {"data_parallel_size": n, "tensor_parallel_size": 1}}  # every process is one FSDP shard
    return {
        "single process": {"devices": 1, "strategy": "auto", "model": {}},
        f"DDP x{n}": {"devices": n, "strategy": "ddp", "model": {}},
        f"DDP x{n}, activation checkpointing": {"devices": n, "strategy": "ddp",
                                                "model": {"network": {"grad_checkpointing": True}}},
        f"FSDP2 x{n}, fp32": {"devices": n, "strategy": fsdp, "model": {"fsdp_param_dtype": "float32"}},
        f"FSDP2 x{n}, bf16 params": {"devices": n, "strategy": fsdp, "model": {"fsdp_param_dtype": "bfloat16"}},
        f"FSDP2 x{n}, bf16, activation checkpointing": {
            "devices": n, "strategy": fsdp,
            "model": {"fsdp_param_dtype": "bfloat16", "network": {"grad_checkpointing": True}}},
    }


def recipe(args: argparse.Namespace, run: Path, shards: Path, devices: int, strategy, model: dict) -> Path:
    """A short run of one configuration, logging throughput to CSV."""
    network = {"vit_img_size": args.size // 4} | model.pop("network", {})
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": args.accelerator, "devices": devices, "strategy": strategy,
                    "max_steps": args.steps, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1, "enable_progress_bar": False, "enable_checkpointing": False,
                    "precision": "32-true", "default_root_dir": str(run),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(run)}},
                    "callbacks": [{"class_path": "tools.bench_distributed.PeakMemory",
                                   "init_args": {"out_dir": str(run)}}]},
        "model": {"preset": args.preset, "network": network, "boundary_metrics": False,
                  "log_images_every_n_val_steps": 0} | model,
        "data": {"train_sources": [{"name": "synth", "urls": str(shards)}], "image_size": args.size,
                 "batch_size": args.batch_size, "samples_per_epoch": 10_000, "num_workers": 1,
                 "pin_memory": args.accelerator == "gpu"},
    }
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_configuration(args: argparse.Namespace, name: str, setting: dict, shards: Path) -> dict:
    """Run one configuration; its throughput and peak memory."""
    run = args.work_dir / name.replace(" ", "_").replace(",", "")
    run.mkdir(parents=True, exist_ok=True)
    path = recipe(args, run, shards, setting["devices"], setting["strategy"], dict(setting["model"]))
    env = os.environ | {"PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    if args.accelerator == "cpu":  # one thread per process: a process per core, like one per GPU
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "dp_train", "fit", "--recipe", str(path)], env=env, cwd=run,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"name": name, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    rates = [float(r["train/samples_per_s"]) for r in rows(run) if r.get("train/samples_per_s")]
    memory = [json.loads(p.read_text())["peak_mib"] for p in run.glob("memory_rank*.json")]
    return {"name": name, "samples_per_s": statistics.median(rates[args.warmup:] or rates),
            "peak_mib": max(memory)}


def rows(run: Path) -> list[dict[str, str]]:
    """The CSV logger's rows of the latest run in `run`."""
    with open(sorted(run.glob("version_*/metrics.csv"))[-1]) as fh:
        return list(csv.DictReader(fh))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    side = max(64, args.size // 4)
    shards = args.work_dir / "shards" / "bench.index.json"
    if not shards.is_file():
        shards = write_synthetic_shards(shards.parent, "bench", 16, size=(side, side), seed=0, progress=False)
    results = [run_configuration(args, name, setting, shards) for name, setting in configurations(args).items()]
    if args.json:
        print(json.dumps({"preset": args.preset, "size": args.size, "accelerator": args.accelerator,
                          "devices": args.devices, "batch_size": args.batch_size, "results": results}))
        return
    base = results[0].get("samples_per_s")
    print(f"{args.preset} preset, {args.size}x{args.size}, batch {args.batch_size} per process, "
          f"{args.accelerator}, {args.steps} steps (median after {args.warmup})\n")
    print("| configuration | samples/s (all processes) | vs single | peak memory per process (MiB) |")
    print("|---|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | failed: {r['error']} | | |")
            continue
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['name']} | {r['samples_per_s']:.2f} | {ratio} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
