"""The parity check of an exported ONNX graph: ONNX Runtime beside PyTorch on the same images, and the bound within
which a correct float32 graph stays.

The bound is derived from float32 arithmetic on the images checked, per output o (maxima over all their pixels):

    e_o = max |PyTorch float32 - PyTorch float64|   what float32 rounding costs this network on these images
    R_o = max |PyTorch float64|                     the output's scale
    d_o = max |ONNX Runtime - PyTorch float32|      the figure checked (max rel = d_o / R_o)
    bound_o = BOUND_FACTOR * max(e_o, u * R_o)      u = 2^-24, float32's unit roundoff

A correct graph is another float32 evaluation of the same function: its own error against the exact (float64)
result, e_ort, is of the order of PyTorch's (other kernels, other summation orders), and d_o <= e_o + e_ort by the
triangle inequality. BOUND_FACTOR = 8 lets ONNX Runtime's float32 error be up to 7 times PyTorch's; the floor
u * R_o covers an output that PyTorch happens to get right to within one rounding (then e_o is below an ulp). A
wrong graph (a missing op, a transposed weight, a baked-in batch size) is off by a sizeable fraction of R_o,
orders of magnitude above the bound. `max_rel` replaces the derived bound with max_rel * R_o (R_o from float32),
and the float64 pass, the largest in memory, is skipped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dp_train.inference.images import image_to_tensor, load_image

BOUND_FACTOR = 8.0
"""How many times PyTorch's own float32 error ONNX Runtime's output may differ from PyTorch's (module docstring)."""
UNIT_ROUNDOFF = 2.0**-24
"""float32's unit roundoff: half the distance from 1 to the next float32."""
RANDOM_SEED = 0
"""Seed of the random check images, so that a check is repeatable."""


@dataclass(frozen=True)
class OutputParity:
    """How far ONNX Runtime's values of one output are from PyTorch's, and the bound they must stay within."""

    max_abs: float
    max_rel: float
    bound_abs: float
    bound_rel: float
    float32_error: float
    """e_o: PyTorch float32 against float64, the float32 error the bound derives from."""
    scale: float
    """R_o: the output's largest magnitude (float64), the denominator of the relative figures."""

    @property
    def passed(self) -> bool:
        """Whether the graph's error is within the bound (NaN fails)."""
        return self.max_abs <= self.bound_abs

    def figures(self) -> dict[str, float | None]:
        """The figures as JSON values (an infinite or NaN error as null)."""
        return {k: v if math.isfinite(v) else None for k, v in asdict(self).items()}


def compare(
    onnx: np.ndarray, torch32: np.ndarray, torch64: np.ndarray | None, max_rel: float | None = None
) -> OutputParity:
    """The parity of one output: ONNX Runtime's values `onnx` against PyTorch's in float32 and float64, bounded as
    the module docstring derives, or by `max_rel` times the output's scale (then float64 is not needed: `torch64`
    None, the scale taken from float32, the float32 error unknown, NaN). Raises ValueError when the shapes differ
    (a graph with the wrong output shape is wrong whatever its values)."""
    if onnx.shape != torch32.shape:
        raise ValueError(f"the ONNX graph gives an output of shape {onnx.shape}, PyTorch {torch32.shape}")
    exact = torch32.astype(np.float64) if torch64 is None else torch64
    scale = float(np.abs(exact).max(initial=0.0))
    error32 = math.nan if torch64 is None else float(np.abs(torch32 - exact).max(initial=0.0))
    max_abs = float(np.abs(onnx.astype(np.float64) - torch32).max(initial=0.0))
    if max_rel is None:
        bound_abs = BOUND_FACTOR * max(error32, UNIT_ROUNDOFF * scale)
    else:
        bound_abs = max_rel * scale
    return OutputParity(max_abs, relative(max_abs, scale), bound_abs, relative(bound_abs, scale), error32, scale)


def relative(value: float, scale: float) -> float:
    """value / scale, with 0 / 0 = 0 (an output that is zero everywhere, matched exactly)."""
    if scale > 0:
        return value / scale
    return 0.0 if value == 0 else math.inf


def check_images(random_count: int, files: list[Path], size: int) -> torch.Tensor:
    """The (N, 3, size, size) images in [-1, 1] to check on: `random_count` uniform random ones (seeded), then
    `files` resized to the network size (bilinear, as DepthPro.infer does). An unreadable file is a ValueError
    naming it."""
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    images = [torch.rand(random_count, 3, size, size, generator=generator) * 2 - 1]
    for path in files:
        try:
            image = image_to_tensor(load_image(path)[0])
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read --parity-image {path}: {err}") from None
        images.append(F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(images)


def torch_outputs(graph: nn.Module, images: torch.Tensor, dtype: torch.dtype) -> list[np.ndarray]:
    """Per output of `graph`, its values on `images` (one image at a time) computed in `dtype`. The network is
    converted to `dtype` and back to float32 (exact, as float32 -> float64 -> float32 loses nothing)."""
    graph.to(dtype)
    try:
        with torch.inference_mode():
            per_image = [graph(image[None].to(dtype)) for image in images]
    finally:
        graph.float()
    return [torch.cat(values).numpy() for values in zip(*per_image)]


def onnxruntime_outputs(path: Path, images: torch.Tensor) -> list[np.ndarray]:
    """The ONNX file's outputs for `images`, all in one batch (so the check also runs the dynamic batch
    dimension), on ONNX Runtime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})


def torch_references(
    graph: nn.Module, images: torch.Tensor, float64: bool = True
) -> tuple[list[np.ndarray], list[np.ndarray] | list[None]]:
    """PyTorch's outputs on `images` in float32 and, when `float64` (the derived bound needs it), in float64.
    Taken before the export: torch's exporter keeps the float32 weights alive after it returns, so that
    converting to float64 afterwards would hold both. The float64 pass is the largest in memory (twice the
    weights, twice the activations: over 20 GB for depth_pro_l at 1536 x 1536)."""
    torch32 = torch_outputs(graph, images, torch.float32)
    return torch32, torch_outputs(graph, images, torch.float64) if float64 else [None] * len(torch32)


def check_parity(
    names: tuple[str, ...], path: Path, images: torch.Tensor, references: tuple[list[np.ndarray], list[np.ndarray]],
    max_rel: float | None = None,
) -> dict[str, OutputParity]:
    """Run the ONNX file at `path` on `images`; the parity of each output, by name, against PyTorch's float32 and
    float64 `references` (`torch_references`)."""
    onnx = onnxruntime_outputs(path, images)
    if len(onnx) != len(names):
        raise ValueError(f"the ONNX graph gives {len(onnx)} outputs, PyTorch {len(names)} ({', '.join(names)})")
    return {name: compare(*values, max_rel=max_rel) for name, *values in zip(names, onnx, *references)}
