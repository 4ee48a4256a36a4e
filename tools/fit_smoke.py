"""A short `fit` of recipes/stage2.yaml on one device, for tools/bench_gpu.py: the shipped recipe layered with a
smoke override (one device, the preset under test, synthetic shards, a CSV log, no checkpoint), then its loss
curve read back and checked: finite, and lower at the end than at the start.
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SCENES = 8
"""Distinct scenes the fit cycles through: few, so that 50 steps see each several times and the loss can fall."""


def render_shards(folder: Path, size: int) -> Path:
    """Render `SCENES` procedural scenes at `size`² into `folder` (python -m dp_train synth); their index."""
    subprocess.run([sys.executable, "-m", "dp_train", "synth", "--out", str(folder), "--prefix", "smoke",
                    "--count", str(SCENES), "--size", str(size), "--depth-format", "png16", "--quiet",
                    "--overwrite"], cwd=REPO, check=True)
    return folder / "smoke.index.json"


def smoke_override(folder: Path, index: Path, args: argparse.Namespace, device: torch.device, size: int) -> dict:
    """The settings laid over stage2.yaml: everything that makes it one device, `args.fit_steps` steps of batch 2
    on `index`, logged to CSV; the optimisation, losses and augmentation stay stage 2's."""
    network = {"vit_img_size": args.vit_img_size} if args.vit_img_size else {}
    trainer = {"devices": 1, "strategy": "auto", "max_steps": args.fit_steps, "log_every_n_steps": 1,
               "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_checkpointing": False,
               "default_root_dir": str(folder), "callbacks": [],
               "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                          "init_args": {"save_dir": str(folder), "name": "csv", "version": 0}}}
    if device.type == "cpu":
        trainer |= {"accelerator": "cpu", "precision": "32-true"}
    source = {"name": "smoke", "urls": str(index.resolve()), "metric": True, "synthetic": True}
    return {
        "trainer": trainer,
        "model": {"preset": args.preset, "init_from": None, "network": network},
        "data": {"train_sources": [source], "val_sources": [source | {"name": "smoke_val"}], "image_size": size,
                 "batch_size": 2, "global_batch_size": 2, "samples_per_epoch": 2 * args.fit_steps,
                 "num_workers": 4},
    }


def read_losses(folder: Path) -> list[float]:
    """`train/loss` per logged step from the CSV logger's metrics.csv ([] if none was written)."""
    path = folder / "csv" / "version_0" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as file:
        return [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]


def run_fit_smoke(args: argparse.Namespace, device: torch.device, size: int) -> dict:
    """Render (or take `--shards`), run the fit as a user would, and return its figures and verdict."""
    folder = (args.out / "fit").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    index = args.shards or render_shards(folder / "shards", size)
    render_s = time.perf_counter() - start
    override = folder / "smoke.yaml"
    override.write_text(yaml.safe_dump(smoke_override(folder, index, args, device, size), sort_keys=False))
    command = [sys.executable, "-m", "dp_train", "fit", "--recipe", "recipes/stage2.yaml", "--recipe", str(override)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    losses = read_losses(folder)
    tenth = max(1, len(losses) // 10)
    return {
        "command": " ".join(command[1:]), "returncode": proc.returncode, "render_s": render_s,
        "fit_s": time.perf_counter() - start, "steps_logged": len(losses), "losses": losses,
        "finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "falls": len(losses) >= 2 and sum(losses[-tenth:]) / tenth < sum(losses[:tenth]) / tenth,
        "error_tail": proc.stderr.strip().splitlines()[-3:] if proc.returncode else [],
    }
