"""Mechanism check of the derivative losses (MAGE, MALE, MSGE; paper Sec. 3.2, Eq. 2) at toy scale on a CPU.

Two parts, both printing figures (results/derivative_losses.md records them; nothing here is a test):

  probe  At the shipped toy start, on the 8 training scenes: each term's value, the size of its gradient with
         respect to the prediction and to the network's weights (from which balancing weights follow), how
         much of its prediction gradient lies on ground-truth edges, and the boundary F1 that the ground truth
         itself reaches once blurred to a coarser resolution (what a network whose output is that coarse could
         at best score).
  grid   Real `python -m dp_train fit` runs of recipes/derivative_losses.yaml (8 scenes, validated on the same
         8) for each weight setting x seed; a Markdown table of per-term magnitudes, F1 and AbsRel (mean ± sd).

    python -m dp_train synth --out runs/lossmech/scenes512 --prefix train8 --count 8 --size 512 --seed 0 \
        --depth-format npy32 --image-format png
    python tools/derivative_losses.py probe
    python tools/derivative_losses.py grid --seeds 3 --steps 150 --settings mae default balanced
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "derivative_losses.yaml"
TERMS = ("mae", "mage", "male", "msge")

SETTINGS = {
    # name: loss weights (mae, mage, male, msge); the derivative kernels as shipped (Scharr / 32)
    "mae": {"mae": 1.0},
    "default": {"mae": 1.0, "mage": 1.0, "male": 1.0, "msge": 1.0},
    "raw_scharr": {"mae": 1.0, "mage": 32.0, "male": 1.0, "msge": 1024.0},   # = unnormalised Scharr at weight 1
    # each derivative term's weight-gradient norm equal to MAE's at the start (`probe`: MAE/term = 8.8, 0.30, 41)
    "balanced": {"mae": 1.0, "mage": 9.0, "male": 0.3, "msge": 40.0},
    "mage": {"mae": 1.0, "mage": 1.0},
    "mage4": {"mae": 1.0, "mage": 4.0},
    "male": {"mae": 1.0, "male": 1.0},
    "msge": {"mae": 1.0, "msge": 1.0},
    "msge_big": {"mae": 1.0, "msge": 100.0},
    "deriv_x4": {"mae": 1.0, "mage": 4.0, "male": 4.0, "msge": 4.0},
}


def load_start(recipe: dict):
    """The recipe's network with its starting weights, in eval mode."""
    from dp_train.train.module import build_network
    from dp_train.model.weights import load_weights

    model = recipe["model"]
    net = build_network(model["preset"], model["network"])
    load_weights(net, REPO / model["init_from"])
    return net.eval()


def val_batches(recipe: dict):
    """The recipe's validation samples as the network sees them (EvalTransform at image_size)."""
    from dp_train.data.datamodule import DepthDataModule
    from dp_train.data.sources import SourceConfig

    data = recipe["data"]
    dm = DepthDataModule(val_sources=[SourceConfig(**s) for s in data["val_sources"]], image_size=data["image_size"],
                         batch_size=8, num_workers=0, pin_memory=False)
    dm.setup("validate")
    return [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]


def edge_band(target: torch.Tensor, valid: torch.Tensor, ratio: float = 1.05) -> torch.Tensor:
    """(B,1,H,W) bool: pixels next to a ground-truth contour (neighbour inverse-depth ratio > `ratio`), dilated 1 px."""
    t = target.clamp(min=1e-8)
    edge = torch.zeros_like(valid)
    rx = torch.maximum(t[..., :, 1:] / t[..., :, :-1], t[..., :, :-1] / t[..., :, 1:]) > ratio
    ry = torch.maximum(t[..., 1:, :] / t[..., :-1, :], t[..., :-1, :] / t[..., 1:, :]) > ratio
    edge[..., :, 1:] |= rx
    edge[..., :, :-1] |= rx
    edge[..., 1:, :] |= ry
    edge[..., :-1, :] |= ry
    return (torch.nn.functional.max_pool2d(edge.float(), 3, stride=1, padding=1) > 0) & valid


def probe(args: argparse.Namespace) -> None:
    """Term values and gradients at the start; F1 ceilings of coarse outputs."""
    from dp_train.losses.objective import Objective, depth_objective
    from dp_train.evaluation.boundary import si_boundary_f1

    recipe = yaml.safe_load(RECIPE.read_text())
    net = load_start(recipe)
    params = [p for n, p in net.named_parameters() if not n.startswith("fov.")]
    batches = val_batches(recipe)
    rows, f1_rows = {t: [] for t in TERMS}, {}
    for batch in batches:
        with torch.no_grad():
            pred0, _ = net(batch["image"], with_fov=False)
        band = edge_band(batch["target"], batch["valid"])
        print(f"prediction {tuple(pred0.shape)}, target {tuple(batch['target'].shape)}; edge band "
              f"{band.float().mean():.3f} of pixels")
        for term in TERMS:
            weights = {t: (1.0 if t == term else 0.0) for t in TERMS}
            # the prediction's gradient (a leaf copy) and the weights' gradient of the term alone
            pred = pred0.clone().requires_grad_(True)
            logged, _ = depth_objective(pred, batch["target"], batch["valid"], batch["metric"], batch["synthetic"],
                                        batch["sparse"], Objective(**weights), 0.2, 6)
            value = logged[term]
            (g_pred,) = torch.autograd.grad(value, pred)
            net.zero_grad()
            out, _ = net(batch["image"], with_fov=False)
            logged, _ = depth_objective(out, batch["target"], batch["valid"], batch["metric"], batch["synthetic"],
                                        batch["sparse"], Objective(**weights), 0.2, 6)
            logged[term].backward()
            g_w = torch.sqrt(sum((p.grad.square().sum() for p in params if p.grad is not None)))
            mass = g_pred.abs()
            rows[term].append({
                "value": float(value), "grad_pred_l1": float(mass.sum()), "grad_w": float(g_w),
                "edge_share": float(mass[band].sum() / mass.sum().clamp(min=1e-30)),
                "pixel_share": float(band.float().mean()),
            })
        gt = batch["f_px"].view(-1, 1, 1, 1) / (batch["image"].shape[-1] * batch["target"].clamp(min=1e-8))
        for i in range(gt.shape[0]):
            inv_gt = batch["target"][i:i + 1]
            f1_rows.setdefault("start prediction", []).append(
                si_boundary_f1(1.0 / pred0[i, 0].clamp(min=1e-4), gt[i, 0], batch["valid"][i, 0]))
            for factor in (1, 2, 4, 8, 16):
                coarse = torch.nn.functional.avg_pool2d(inv_gt, factor) if factor > 1 else inv_gt
                up = torch.nn.functional.interpolate(coarse, size=inv_gt.shape[-2:], mode="bilinear",
                                                     align_corners=False) if factor > 1 else coarse
                f1_rows.setdefault(f"ground truth at 1/{factor} resolution, bilinear up", []).append(
                    si_boundary_f1(1.0 / up[0, 0].clamp(min=1e-8), gt[i, 0], batch["valid"][i, 0]))
    print("\n| term (weight 1, Scharr/32) | value | |dL/dpred|_1 | |dL/dweights|_2 | share of |dL/dpred| on edges "
          "(edge band = share of pixels) |")
    print("|---|---:|---:|---:|---:|")
    ref = statistics.mean(r["grad_w"] for r in rows["mae"])
    for term in TERMS:
        m = {k: statistics.mean(r[k] for r in rows[term]) for k in rows[term][0]}
        print(f"| {term} | {m['value']:.4g} | {m['grad_pred_l1']:.3g} | {m['grad_w']:.3g} "
              f"(MAE/this = {ref / m['grad_w']:.3g}) | {m['edge_share']:.3f} ({m['pixel_share']:.3f}) |")
    print("\n| boundary F1 on the 8 scenes | mean |\n|---|---:|")
    for name, values in f1_rows.items():
        print(f"| {name} | {statistics.mean(values):.3f} |")


def run_one(setting: str, weights: dict, seed: int, steps: int, out: Path) -> dict:
    """One `python -m dp_train fit` of the recipe; the last logged train terms and the validation metrics."""
    run_dir = out / f"{setting}-s{seed}"
    loss = {t: float(weights.get(t, 0.0)) for t in TERMS} | {"mse": 0.0}
    cmd = [sys.executable, "-m", "dp_train", "fit", "--recipe", str(RECIPE),
           f"--seed_everything={seed}", f"--data.seed={seed}",
           f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
           f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
           f"--model.loss={json.dumps(loss)}"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{setting} seed {seed} failed:\n{proc.stderr[-3000:]}")
    (metrics_csv,) = run_dir.rglob("metrics.csv")
    with open(metrics_csv) as f:
        log = list(csv.DictReader(f))
    train = [r for r in log if r.get("train/loss")]
    tail = train[-max(1, len(train) // 3):]   # the last third of the run
    result = {"setting": setting, "seed": seed, "seconds": time.time() - start}
    for t in TERMS:
        vals = [float(r[f"train/{t}"]) for r in tail if r.get(f"train/{t}")]
        result[t] = statistics.mean(vals) if vals else None
    val = [r for r in log if r.get("val/abs_rel")][-1]
    result["f1"], result["abs_rel"] = float(val["val/boundary_f1"]), float(val["val/abs_rel"])
    return result


def grid(args: argparse.Namespace) -> None:
    """Every setting x seed; results appended to <out>/results.jsonl (a rerun skips finished runs)."""
    args.out.mkdir(parents=True, exist_ok=True)
    done_file = args.out / "results.jsonl"
    done = [json.loads(l) for l in done_file.read_text().splitlines()] if done_file.exists() else []
    for seed in range(args.first_seed, args.seeds):
        for setting in args.settings:
            if any(r["setting"] == setting and r["seed"] == seed for r in done):
                continue
            result = run_one(setting, SETTINGS[setting], seed, args.steps, args.out)
            print(json.dumps(result), flush=True)
            with open(done_file, "a") as f:
                f.write(json.dumps(result) + "\n")
            done.append(result)
    table(done, args.settings)


def _ms(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{values[0]:{fmt}}" if len(values) == 1 else f"{statistics.mean(values):{fmt}} ± {sd:{fmt}}"


def table(results: list[dict], settings: list[str]) -> None:
    """Markdown: weights, seeds, per-term magnitudes (last third of training), F1 and AbsRel (mean ± sd)."""
    print("\n| weights (mae, mage, male, msge) | seeds | MAE | MAGE | MALE | MSGE | boundary F1 | AbsRel |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for setting in settings:
        rs = [r for r in results if r["setting"] == setting]
        if not rs:
            continue
        w = SETTINGS[setting]
        cells = [_ms([r[t] for r in rs if r[t] is not None], ".4f") for t in TERMS]
        print(f"| {setting}: {', '.join(f'{w.get(t, 0):g}' for t in TERMS)} | {len(rs)} | {' | '.join(cells)} | "
              f"{_ms([r['f1'] for r in rs], '.3f')} | {_ms([r['abs_rel'] for r in rs], '.3f')} |")


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("probe", help="term values and gradients at the start")
    g = sub.add_parser("grid", help="fit runs: settings x seeds")
    g.add_argument("--seeds", type=int, default=3, help="seeds --first-seed .. SEEDS-1 (default 3)")
    g.add_argument("--first-seed", type=int, default=0,
                   help="first seed to run (default 0): adds seeds to an earlier grid run elsewhere")
    g.add_argument("--steps", type=int, default=150, help="optimizer steps per run (default 150)")
    g.add_argument("--settings", nargs="+", default=["mae", "default", "balanced", "raw_scharr"], choices=list(SETTINGS))
    g.add_argument("--out", type=Path, default=REPO / "runs" / "lossmech" / "grid")
    args = p.parse_args(argv)
    probe(args) if args.cmd == "probe" else grid(args)


if __name__ == "__main__":
    main()
