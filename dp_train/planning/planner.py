"""Memory per GPU and time of a training run's steps, from traces of the real network (dp_train/planning/trace.py)
and the arithmetic of the strategy: what each GPU holds of the parameters, gradients and AdamW state under DDP
or FSDP2, plus the traced activations; time from the counted FLOPs at the share of the GPU's peak rate measured
at that per-GPU batch (dp_train/planning/gpus.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

from torch._subclasses.fake_tensor import FakeTensorMode

from dp_train.model import DepthProConfig
from dp_train.model.parallelize import blocks
from dp_train.planning.gpus import USABLE_FRACTION, Gpu, utilisation
from dp_train.planning.trace import fake_network, trace_step
from dp_train.train.trainable import prepare_trainable

GIB = 2**30


@dataclass(frozen=True)
class Setting:
    """How a step runs: per-GPU batch, gradient accumulation, GPUs, precision, activation checkpointing,
    strategy ('ddp', or 'fsdp': FSDP2 over all the GPUs; anything else: one process, no wrapper) and whether the
    network runs under regional torch.compile (`model.compile`: faster, not planned smaller)."""

    batch: int
    accumulation: int
    gpus: int
    precision: str
    checkpointing: bool
    strategy: str
    compiled: bool = False

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step."""
        return self.batch * self.accumulation * self.gpus

    def replace(self, **changes) -> "Setting":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Memory:
    """Predicted peak bytes per GPU, by what holds them."""

    parameters: float
    gradients: float
    optimizer: float
    ddp_buckets: float
    activations: float

    @property
    def total(self) -> float:
        """All of it."""
        return self.parameters + self.gradients + self.optimizer + self.ddp_buckets + self.activations


class Planner:
    """The network of a recipe (`cfg`; what trains as the run sets it: training `mode`, frozen ViT norms,
    `model.freeze`'s parts and `model.lora`'s factors; `mode=None`: every parameter trains, as in
    tools/bench_gpu.py), traced on demand: a fake network, one trace per (batch 1 and 2) x precision x
    checkpointing, activations linear in the batch between and beyond them."""

    def __init__(self, cfg: DepthProConfig, mode: str | None = "depth", freeze_vit_norms: bool = True,
                 freeze: list[str] | None = None, lora: dict | None = None) -> None:
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.network = fake_network(cfg, self.fake_mode)
        if mode is not None:
            with self.fake_mode:  # LoRA's factors are fake too
                prepare_trainable(self.network, mode, freeze_vit_norms, freeze or [], lora)
        params = list(self.network.parameters())
        self.parameter_count = sum(p.numel() for p in params)
        self.trainable_count = sum(p.numel() for p in params if p.requires_grad)
        unit_sizes = [sum(p.numel() for p in block.parameters()) for block in blocks(self.network)]
        self.largest_unit = max(unit_sizes)
        self.root_unit = self.parameter_count - sum(unit_sizes)
        self._trace = cache(self._trace_uncached)

    def _trace_uncached(self, batch: int, precision: str, checkpointing: bool) -> tuple[int, int]:
        traced = "bf16-mixed" if precision == "16-mixed" else precision  # the same sizes: 2-byte autocast
        trace = trace_step(self.network, batch, traced, checkpointing, self.fake_mode)
        return trace.peak_bytes, trace.flops

    def step_bytes_and_flops(self, batch: int, precision: str, checkpointing: bool) -> tuple[float, float]:
        """Traced peak bytes above the parameters (activations, gradients, temporaries) and FLOPs of one
        forward + backward at `batch`: exact at 1 and 2, linear from them elsewhere."""
        one = self._trace(1, precision, checkpointing)
        if batch == 1:
            return float(one[0]), float(one[1])
        two = self._trace(2, precision, checkpointing)
        return tuple(float(a + (b - a) * (batch - 1)) for a, b in zip(one, two))  # type: ignore[return-value]

    def memory(self, setting: Setting) -> Memory:
        """Peak bytes per GPU of `setting`'s micro-step."""
        traced, _ = self.step_bytes_and_flops(setting.batch, setting.precision, setting.checkpointing)
        full_gradients = 4.0 * self.trainable_count
        activations = traced - full_gradients
        if setting.strategy == "fsdp":
            shards = setting.gpus
            gathered = 2.0 * (2 * self.largest_unit + self.root_unit)  # bf16 copies: root + current + prefetched
            return Memory(4.0 * self.parameter_count / shards + gathered, full_gradients / shards + 2.0 *
                          self.largest_unit, 8.0 * self.trainable_count / shards, 0.0, activations)
        buckets = full_gradients if setting.strategy == "ddp" else 0.0
        return Memory(4.0 * self.parameter_count, full_gradients, 8.0 * self.trainable_count, buckets, activations)

    def flops_per_sample(self, precision: str, checkpointing: bool) -> float:
        """Counted FLOPs of forward + backward (+ recomputation) per image."""
        return self.step_bytes_and_flops(1, precision, checkpointing)[1]

    def step_seconds(self, setting: Setting, gpu: Gpu, share: float | None = None) -> float | None:
        """Seconds per optimizer step (accumulated micro-steps, compute only, communication assumed overlapped) at
        `share` of the GPU's peak rate (None: the share measured at the setting's per-GPU batch, checkpointing
        and compiling); None when the GPU has no tensor cores for the precision."""
        rate = gpu.rate(setting.precision)
        if rate is None:
            return None
        _, flops = self.step_bytes_and_flops(setting.batch, setting.precision, setting.checkpointing)
        share = share or utilisation(setting.batch, setting.checkpointing, setting.compiled)
        return setting.accumulation * flops / (rate * 1e12 * share)

    def fits(self, setting: Setting, gpu: Gpu) -> bool:
        """Whether the predicted peak leaves the margin of `USABLE_FRACTION` free."""
        return self.memory(setting).total <= USABLE_FRACTION * gpu.memory_gib * GIB


def alternatives(setting: Setting) -> list[Setting]:
    """Settings with the same global batch: checkpointing either way, the per-GPU batch halved down to 1 (more
    accumulation), DDP or FSDP2 (FSDP only over several GPUs)."""
    batches = [b for b in range(setting.batch, 0, -1) if (setting.batch * setting.accumulation) % b == 0]
    strategies = [setting.strategy] + (["fsdp"] if setting.gpus > 1 and setting.strategy != "fsdp" else [])
    return [setting.replace(batch=b, accumulation=setting.batch * setting.accumulation // b, checkpointing=c,
                            strategy=s)
            for s in strategies for c in (False, True) for b in batches]


def best_fitting(planner: Planner, setting: Setting, gpu: Gpu, share: float | None = None) -> Setting | None:
    """The fastest alternative that fits `gpu` (fewest changes from `setting` on a tie) at `share` of its peak
    rate (None: the measured share by batch); None if none does."""
    fitting = [s for s in alternatives(setting) if planner.fits(s, gpu)]
    timed = [(planner.step_seconds(s, gpu, share), s) for s in fitting]
    timed = [(t, s) for t, s in timed if t is not None]
    if not timed:
        return None
    return min(timed, key=lambda ts: (round(ts[0], 6), changes(ts[1], setting)))[1]


def changes(setting: Setting, start: Setting) -> int:
    """How many of per-GPU batch, checkpointing and strategy differ from `start`."""
    return sum(getattr(setting, f) != getattr(start, f) for f in ("batch", "checkpointing", "strategy"))
