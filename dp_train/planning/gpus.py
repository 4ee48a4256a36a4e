"""The GPUs the planner knows: memory and peak dense tensor-core rates, from the vendors' datasheets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    """One GPU model: memory as `nvidia-smi` reports it and peak dense TFLOP/s per mixed precision (None: the
    GPU has no such tensor cores, e.g. bf16 on a V100)."""

    name: str
    memory_gib: float
    tflops: dict[str, float | None]

    def rate(self, precision: str) -> float | None:
        """Peak dense TFLOP/s at `precision` (32-true: the TF32 / fp32 rate)."""
        return self.tflops.get(precision)


GPUS: dict[str, Gpu] = {
    "V100-32GB": Gpu("V100-32GB", 31.7, {"16-mixed": 125.0, "bf16-mixed": None, "32-true": 15.7}),
    "A100-40GB": Gpu("A100-40GB", 39.4, {"16-mixed": 312.0, "bf16-mixed": 312.0, "32-true": 156.0}),
    "A100-80GB": Gpu("A100-80GB", 79.2, {"16-mixed": 312.0, "bf16-mixed": 312.0, "32-true": 156.0}),
    "H100-80GB": Gpu("H100-80GB", 79.6, {"16-mixed": 989.0, "bf16-mixed": 989.0, "32-true": 494.0}),
    "H200-141GB": Gpu("H200-141GB", 140.4, {"16-mixed": 989.0, "bf16-mixed": 989.0, "32-true": 494.0}),
}
"""Memory in GiB as nvidia-smi's total (the H200's was read on one: 143,771 MiB); rates are SXM datasheet dense
figures (A100/H100 32-true: TF32)."""

DEFAULT_GPUS = ("V100-32GB", "A100-40GB", "A100-80GB", "H100-80GB")

USABLE_FRACTION = 0.92
"""Share of a GPU's memory a step may plan to use: the CUDA context, cuDNN / cuBLAS workspaces outside the
allocator and fragmentation take the rest (a margin, not a measurement)."""

UTILISATION_BY_BATCH = {
    (False, False): {1: 0.22, 2: 0.29, 3: 0.30},
    (False, True): {1: 0.18, 2: 0.24, 3: 0.28},
    (True, False): {1: 0.23, 2: 0.37, 3: 0.37},
    (True, True): {1: 0.18, 2: 0.32, 3: 0.35},
}
"""Share of the peak rate a training step achieves, by (regional torch.compile, activation checkpointing) and
per-GPU batch (4 and more: `UTILISATION_LARGE`): measured on an H200 for depth_pro_l at 1536², as counted FLOPs
(recomputation included) per second over the datasheet rate (results/gpu_h200.md; batch 3 interpolated). Eager:
the mean of every measured bf16-mixed and 16-mixed step; compiled: the one bf16-mixed run of each. Recomputation
costs more time than its FLOPs, hence lower shares with checkpointing; compiling gains little at batch 1, where the
GPU is under-filled, and 17-33 % of a step's time from batch 2. A GPU with a lower peak rate fills at smaller
batches, so elsewhere this errs on the slow side."""

UTILISATION_LARGE = {(False, False): 0.32, (False, True): 0.31, (True, False): 0.38, (True, True): 0.39}


def utilisation(batch: int, checkpointing: bool, compiled: bool = False) -> float:
    """The measured share of the peak rate at a per-GPU `batch`, with or without checkpointing and compiling."""
    key = (compiled, checkpointing)
    return UTILISATION_BY_BATCH[key].get(batch, UTILISATION_LARGE[key])


def utilisation_range(compiled: bool) -> tuple[float, float]:
    """The lowest and highest measured share, compiled or eager, over every batch and checkpointing."""
    shares = [share for (comp, ckpt), by_batch in UTILISATION_BY_BATCH.items() if comp == compiled
              for share in [*by_batch.values(), UTILISATION_LARGE[comp, ckpt]]]
    return min(shares), max(shares)
