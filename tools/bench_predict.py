"""Throughput of `python -m dp_train predict`: images per second by batch size and reading threads, against the
one-at-a-time loop of an earlier checkout, and whether their depth maps agree.

Each setting runs in its own child process with the checkout's `dp_train.inference.predict` (`add_arguments`,
`run`: the same in both layouts): a warm-up run on one image (imports, first forward), then `run` timed on 1 image
and on N images; the rate is (N - 1) / (t_N - t_1), so loading the weights and the run's own start drop out,
and the CPU seconds per image (all threads of the process) likewise.
Every child is repeated, the settings interleaved round by round, and the fastest times kept (a shared machine
only ever slows a run down, and interleaving spreads its load over the settings). The depth maps of every setting
are compared with the first one's (max abs and max relative difference).

    python tools/bench_predict.py --weights weights/toy_start.safetensors --old-checkout ../main
    python tools/bench_predict.py --preset base --vit-img-size 128 --images 8 --settings 1:1,4:2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None,
                        help="weights to run (default: random weights of --preset at --vit-img-size)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vit-img-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=16, help="N: images per timed run")
    parser.add_argument("--size", default="640x480", help="WxH of the generated JPEG photos")
    parser.add_argument("--settings", default="1:1,4:2",
                        help="comma-separated batch:workers settings of this checkout's predict")
    parser.add_argument("--old-checkout", type=Path, default=None,
                        help="a checkout whose predict is the one-at-a-time loop (no --batch-size), run first")
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args(argv)


def write_photos(folder: Path, count: int, width: int, height: int) -> None:
    """`count` JPEG photos: smooth colour gradients with a box and sensor noise, each different."""
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:height, 0:width]
    for k in range(count):
        rng = np.random.default_rng(k)
        image = np.stack([y / height, (x / width) ** (1 + k % 3), np.full(x.shape, 0.2 + 0.04 * k)], axis=-1)
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        image[(abs(x - cx) < width // 6) & (abs(y - cy) < height // 5)] = rng.random(3)
        image += rng.normal(0, 0.02, image.shape)
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / f"photo_{k:03d}.jpg",
                                                                              quality=92)


def random_weights(preset: str, vit_img_size: int, path: Path) -> Path:
    """Random (seeded) weights of the preset, as a .safetensors that records the network's shape."""
    sys.path.insert(0, str(REPO))
    import torch

    from dp_train.model import DepthProConfig, build_depth_pro, save_weights

    torch.manual_seed(0)
    save_weights(build_depth_pro(DepthProConfig.preset(preset, vit_img_size=vit_img_size)), path)
    return path


CHILD = """
import argparse, json, sys, time
from dp_train.inference.predict import add_arguments, run
parser = argparse.ArgumentParser()
add_arguments(parser)
root, out, common = sys.argv[1], sys.argv[2], sys.argv[3:]
def timed(inputs, output):
    args = parser.parse_args(["--input", f"{root}/{inputs}", "--output", output, *common])
    start, cpu = time.perf_counter(), time.process_time()
    assert run(args) == 0
    return time.perf_counter() - start, time.process_time() - cpu
timed("one", f"{root}/warm_{time.time_ns()}")
(one, cpu_one), (many, cpu_many) = timed("one", out + "_one"), timed("many", out)
print(json.dumps({"one": one, "many": many, "cpu_one": cpu_one, "cpu_many": cpu_many}))
"""
"""A child's script: after a warm-up run on one image (imports, first forward), time `predict` on one image and
on N images in the same process."""


def timed_runs(checkout: Path, weights: Path, root: Path, output: Path, extra: list[str]) -> dict[str, float]:
    """Seconds of `checkout`'s `predict` on one image and on N images, in one child process after a warm-up."""
    common = ["--weights", str(weights), "--device", "cpu", *extra]
    command = [sys.executable, "-c", CHILD, str(root), str(output), *common]
    env = os.environ | {"PYTHONPATH": str(checkout)}
    done = subprocess.run(command, check=True, env=env, cwd=checkout, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(reference: Path, output: Path) -> tuple[float, float]:
    """Max abs and max relative difference of every depth map in `output` from the one in `reference`."""
    worst_abs = worst_rel = 0.0
    for path in sorted(reference.glob("*.npy")):
        ours, theirs = np.load(output / path.name), np.load(path)
        worst_abs = max(worst_abs, float(np.abs(ours - theirs).max()))
        worst_rel = max(worst_rel, float((np.abs(ours - theirs) / theirs).max()))
    return worst_abs, worst_rel


def main(argv: list[str] | None = None) -> None:
    """Run every setting, print a Markdown table."""
    args = parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    root = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    weights = args.weights.resolve() if args.weights else random_weights(args.preset, args.vit_img_size,
                                                                          root / "weights.safetensors")
    write_photos(root / "many", args.images, width, height)
    (root / "one").mkdir()
    (root / "one" / "photo_000.jpg").symlink_to(root / "many" / "photo_000.jpg")
    runs = [("one-at-a-time loop (old checkout)", args.old_checkout.resolve(), [])] if args.old_checkout else []
    for setting in args.settings.split(","):
        batch, workers = setting.split(":")
        runs.append((f"--batch-size {batch} --workers {workers}", REPO, ["--batch-size", batch, "--workers", workers]))
    print(f"{args.images} photos {width}x{height}, weights {weights.name}; rate = (N - 1) / (t_N - t_1), best of "
          f"{args.repeats}\n")
    print("| setting | t_1 (s) | t_N (s) | images/s | CPU s / image | max abs diff (m) | max rel diff |")
    print("|---|---|---|---|---|---|---|")
    rounds = [[timed_runs(checkout, weights, root, root / f"out{index}_{r}", extra)
               for index, (_, checkout, extra) in enumerate(runs)] for r in range(args.repeats)]  # interleaved
    for index, (name, _, _) in enumerate(runs):
        times = {key: min(times[index][key] for times in rounds) for key in ("one", "many", "cpu_one", "cpu_many")}
        diff_abs, diff_rel = compare(root / "out0_0", root / f"out{index}_0")
        rate = (args.images - 1) / (times["many"] - times["one"])
        cpu = (times["cpu_many"] - times["cpu_one"]) / (args.images - 1)
        print(f"| {name} | {times['one']:.1f} | {times['many']:.1f} | {rate:.2f} | {cpu:.2f} | {diff_abs:.2e} | "
              f"{diff_rel:.2e} |", flush=True)


if __name__ == "__main__":
    main()
