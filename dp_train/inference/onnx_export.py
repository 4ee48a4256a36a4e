"""`export --format onnx`: the network as an ONNX graph, kept only when ONNX Runtime reproduces PyTorch on it.

The graph is `DepthPro.forward`: input `image`, (B, 3, S, S) float32 in [-1, 1] at the network size S
(4 * vit_img_size, 1536 for depth_pro_l), B dynamic; outputs `canonical_inverse_depth` (B, 1, S, S) and, when the
network has an FOV head, `fov_deg` (B,). Written by torch's dynamo exporter (torch.export, then onnxscript's
translation) at opset `OPSET`. Everything is written into a temporary folder beside --out and moved into place only
after the parity check (dp_train/inference/onnx_parity.py) passed: a refused graph leaves nothing behind.
Files: <out> (the graph), <out>.data (the weights, when they go to an external file) and <out>.json (the figures).
docs/export.md says how to run the file elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn

from dp_train.inference.onnx_parity import (
    BOUND_FACTOR,
    OutputParity,
    check_images,
    check_parity,
    torch_references,
)
from dp_train.model import DepthPro, DepthProConfig, build_depth_pro
from dp_train.model.weights import check_state_dict_fits, config_for, read_weights

OPSET = 18
"""ONNX opset of the graph: the one torch's dynamo exporter translates to natively (its onnxscript function library
is written at 18; another opset would go through ONNX's version converter). ONNX Runtime runs it from 1.14 on."""
INPUT = "image"
OUTPUTS = ("canonical_inverse_depth", "fov_deg")
EXTRA = ("onnx", "onnxruntime", "onnxscript", "onnx_ir")
"""Modules of the optional extra `dp_train[onnx]` (onnxscript: torch's exporter translates with it; onnx_ir: the
graph it returns, saved with its weights inline or external)."""
PROTOBUF_LIMIT = 2**31
"""Largest file protobuf can read: a graph with its weights inline must stay below it."""
GRAPH_ROOM = 2**26
"""Room left for the graph itself (nodes, names, small constants) next to the weights, under `PROTOBUF_LIMIT`."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `export --format onnx`."""
    group = parser.add_argument_group("--format onnx")
    group.add_argument("--parity-images", type=count, default=2, metavar="N",
                       help="random images the graph is checked on, beside PyTorch (default: %(default)s)")
    group.add_argument("--parity-image", type=Path, action="append", default=[], metavar="IMAGE",
                       help="also check on this image (resized to the network size); repeatable")
    group.add_argument("--max-rel-error", type=positive, default=None, metavar="X",
                       help="refuse the graph when an output's max abs error exceeds X times its largest value "
                            f"(default: {BOUND_FACTOR:g} times PyTorch's own float32 error, measured against float64; "
                            "with X the float64 pass, the largest in memory, is skipped: docs/export.md)")
    group.add_argument("--external-data", action="store_true",
                       help="write the weights to <out>.data even when the graph would stay under protobuf's 2 GiB "
                            "(beyond it they always are)")


def count(text: str) -> int:
    """A whole number >= 0 (argparse type)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> float:
    """A finite number > 0 (argparse type)."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def usage_problem(args: argparse.Namespace) -> str | None:
    """Why `--format onnx` cannot run with these options or here (a module of the extra missing), or None; checked
    before the weights are read."""
    if not args.parity_images and not args.parity_image:
        return "--parity-images 0 and no --parity-image: the graph must be checked on at least one image"
    missing = next((path for path in args.parity_image if not path.is_file()), None)
    if missing is not None:
        return f"--parity-image {missing} is not a file"
    return missing_extra()


def missing_extra() -> str | None:
    """Why `--format onnx` cannot run here (a module of the extra cannot be imported), or None."""
    for name in EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            return f"--format onnx needs the optional packages {', '.join(EXTRA)} ({name} is missing): " \
                   "pip install -e '.[onnx]'"
    return None


def companions(out: Path) -> tuple[Path, Path]:
    """The files written beside the graph `out`: its external weights and its figures."""
    return out.with_name(out.name + ".data"), out.with_name(out.name + ".json")


class Graph(nn.Module):
    """The function the ONNX file holds: `DepthPro.forward` as a tuple of its outputs (no None)."""

    def __init__(self, net: DepthPro) -> None:
        super().__init__()
        self.net = net
        self.eval()

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the graph's outputs: the FOV only when the network has an FOV head."""
        return OUTPUTS if self.net.fov is not None else OUTPUTS[:1]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, S, S) in [-1, 1] -> canonical inverse depth (B, 1, S, S)[, FOV in degrees (B,)]."""
        depth, fov = self.net(image)
        return (depth,) if fov is None else (depth, fov)


def load_network(state: dict[str, torch.Tensor], shape: dict, source: str) -> DepthPro:
    """The float32 network `shape` describes, holding `state`'s tensors (a float16 or bfloat16 file is widened to
    float32). It is built without memory (meta device) and takes the tensors over: `state` is
    emptied, so that they are not held twice when the parity check converts the network to float64."""
    with torch.device("meta"):
        net = build_depth_pro(config_for(state, shape))
    check_state_dict_fits(net, state, source)
    state.update((key, value.float()) for key, value in state.items() if value.is_floating_point())
    net.load_state_dict(state, assign=True)
    state.clear()
    return net.eval()


def export_graph(graph: Graph, path: Path, external: bool) -> None:
    """Write `graph` as ONNX at `path`, with a dynamic batch dimension; with `external`, its weights go to
    `<path>.data`, referenced by that bare file name (relative: the two files move together)."""
    import onnx_ir

    size = graph.net.img_size
    example = torch.zeros(2, 3, size, size)  # batch 2: torch.export would specialise an example batch of 1
    program = torch.onnx.export(
        graph, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT],
        output_names=list(graph.output_names), dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    onnx_ir.save(program.model, path, external_data=companions(path)[0].name if external else None)


def export_in_child(source: Path, shape: dict, path: Path, external: bool) -> None:
    """`export_graph` for the network of `shape` in the weights file `source`, run in a child process that reads
    them itself. torch's exporter keeps memory after it returns (the float32 weights among it: about 10 GB in all
    for depth_pro_l), and only the end of a process gives it back. An exporter that fails is one ValueError with
    its last line (its warnings are not shown)."""
    code = "import sys; from dp_train.inference.onnx_export import export_from_file; export_from_file(*sys.argv[1:])"
    package_root = str(Path(__file__).resolve().parents[2])
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    argv = [str(source), json.dumps(shape), str(path), "external" if external else "inline"]
    child = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, check=False)
    if child.returncode:
        lines = child.stderr.strip().splitlines()
        reason = lines[-1] if lines else "no message"
        if child.returncode < 0:
            reason = f"killed by signal {-child.returncode} (out of memory?)"
        raise ValueError(f"torch's ONNX exporter failed (exit code {child.returncode}): {reason}")


def export_from_file(source: str, shape: str, path: str, weights: str) -> None:
    """The child's side of `export_in_child`: read, build and export (`weights`: "external" or "inline")."""
    state, _ = read_weights(source)
    export_graph(Graph(load_network(state, json.loads(shape), source)), Path(path), weights == "external")


def needs_external_data(graph: Graph) -> bool:
    """Whether the graph with its weights inline would reach protobuf's 2 GiB limit."""
    weights = sum(t.numel() * t.element_size() for t in graph.state_dict().values())
    return weights + GRAPH_ROOM >= PROTOBUF_LIMIT


def run(args: argparse.Namespace, state: dict[str, torch.Tensor], shape: dict) -> int:
    """Export, check and write the graph (the network of `state` and `shape`, read from args.ckpt); a refused
    graph raises ValueError, with nothing written."""
    graph = Graph(load_network(state, shape, str(args.ckpt)))
    images = check_images(args.parity_images, args.parity_image, graph.net.img_size)
    sidecar = write_checked(graph, shape, images, args)
    parity = ", ".join(f"{name} max abs {f['max_abs']:.3g} (bound {f['bound_abs']:.3g})"
                       for name, f in sidecar["parity"]["outputs"].items())
    print(f"wrote {', '.join(sidecar['files'])} and {companions(args.out)[1].name} to {args.out.parent}: opset "
          f"{OPSET}, dynamic batch; ONNX Runtime vs PyTorch on {len(images)} image(s): {parity}")
    return 0


def write_checked(graph: Graph, shape: dict, images: torch.Tensor, args: argparse.Namespace) -> dict:
    """Export `graph` into a temporary folder beside args.out, check it on `images`, and move the files into
    place only when every output is within its bound; the sidecar's content is returned. Nothing is left behind
    otherwise (a folder created for args.out included)."""
    out = args.out
    created = [p for p in (out.parent.absolute(), *out.parent.absolute().parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with sigterm_as_exit():
            sidecar = stage(graph, shape, images, staging / out.name, args)
            place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created if not out.exists() else ():  # deepest first, and only when left empty
            if not any(folder.iterdir()):
                folder.rmdir()
    return sidecar


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within it, SIGTERM (`kill`, a scheduler's time limit) raises SystemExit, so that the staging folder (3.8 GB
    for depth_pro_l) is removed on the way out rather than left behind; the previous handler is restored after.
    Handlers can be set from the main thread only: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def raise_exit(signum: int, frame: object) -> NoReturn:
    """Signal handler: leave through SystemExit with the shell's code for the signal (128 + its number)."""
    raise SystemExit(128 + signum)


def stage(graph: Graph, shape: dict, images: torch.Tensor, path: Path, args: argparse.Namespace) -> dict:
    """Export and check the graph at `path` (in the staging folder) and write its sidecar there. PyTorch runs
    first (float32, then float64), then the export, then ONNX Runtime: the peak memory is the larger of the
    float64 pass, the exporter's process and ONNX Runtime's session, one at a time."""
    start = time.perf_counter()
    references = torch_references(graph, images, float64=args.max_rel_error is None)
    graph.to("meta")  # the weights' memory back before the export and ONNX Runtime (the shapes stay)
    torch_seconds = time.perf_counter() - start
    export_in_child(args.ckpt, shape, path, args.external_data or needs_external_data(graph))
    export_seconds = time.perf_counter() - start - torch_seconds
    parity = check_parity(graph.output_names, path, images, references, args.max_rel_error)
    refuse_if_off(parity, len(images), args.max_rel_error)
    sidecar = figures(graph, path, parity, len(images), args) | {"export_seconds": round(export_seconds, 2)}
    sidecar["parity"]["seconds"] = round(time.perf_counter() - start - export_seconds, 2)
    companions(path)[1].write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def refuse_if_off(parity: dict[str, OutputParity], n_images: int, max_rel: float | None) -> None:
    """Raise one ValueError naming the outputs ONNX Runtime computes beyond their bound."""
    off = [f"{name} max abs error {p.max_abs:.3g} (max rel {p.max_rel:.3g}) exceeds the bound {p.bound_abs:.3g}"
           for name, p in parity.items() if not p.passed]
    if off:
        rule = f"--max-rel-error {max_rel:g}" if max_rel is not None else \
            f"{BOUND_FACTOR:g} x PyTorch's own float32 error; --max-rel-error overrides it"
        raise ValueError(f"the ONNX graph does not reproduce PyTorch on {n_images} images: {'; '.join(off)} "
                         f"(bound: {rule}); nothing written")


def figures(
    graph: Graph, path: Path, parity: dict[str, OutputParity], n_images: int, args: argparse.Namespace
) -> dict:
    """The sidecar's content: what was exported, the files and their sizes, and the parity figures."""
    import onnxruntime

    size = graph.net.img_size
    config = graph.net.config
    files = {p.name: p.stat().st_size for p in (path, companions(path)[0]) if p.exists()}
    bound = f"max_rel_error {args.max_rel_error:g}" if args.max_rel_error is not None else \
        f"{BOUND_FACTOR:g} * max(PyTorch float32 error vs float64, 2^-24 * scale)"
    return {
        "source": str(args.ckpt),
        "network": {k: v for k, v in asdict(config).items() if k not in DepthProConfig.RUNTIME_FIELDS},
        "opset": OPSET,
        "input": {"name": INPUT, "shape": ["batch", 3, size, size], "dtype": "float32", "range": [-1, 1]},
        "outputs": {name: ["batch", 1, size, size] if name == OUTPUTS[0] else ["batch"]
                    for name in graph.output_names},
        "files": files,
        "external_data": companions(path)[0].name if len(files) > 1 else None,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnx": importlib.import_module("onnx").__version__},
        "parity": {"images": n_images, "random_images": args.parity_images,
                   "image_files": [str(p) for p in args.parity_image], "bound": bound,
                   "outputs": {name: p.figures() for name, p in parity.items()}},
    }


def place(staging: Path, out: Path) -> None:
    """Move the staged files to their places (weights, graph, then figures), and drop an earlier export's
    external weights that the new graph does not use (replaced with --overwrite)."""
    data, sidecar = companions(out)
    new_data = (staging / data.name).exists()
    for name in (data.name, out.name, sidecar.name):
        if (staging / name).exists():
            os.replace(staging / name, out.parent / name)
    if data.exists() and not new_data:
        data.unlink()
