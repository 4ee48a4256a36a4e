"""What a training step of the network allocates and computes, found without computing it: the network is built
on the meta device (no weights initialised), its parameters made fake tensors, and one forward + backward traced
under torch's FakeTensorMode, with a dispatch mode that follows every storage's life (peak live bytes) and torch's
FlopCounterMode (FLOPs, activation-checkpointing recomputation included)."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from dp_train.model import DepthProConfig, build_depth_pro
from dp_train.model.parallelize import parallelize

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""Autocast dtypes of Lightning's mixed precisions (anything else runs in float32)."""


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created under this mode that are still alive, and their peak. A storage counts from
    the op that creates it until its last tensor is gone (a weakref finalizer), as the device allocator sees it.

    Activation checkpointing's recomputed tensors sit in reference cycles that only a full garbage collection
    frees; measured on a GPU their memory is back long before (depth_pro_l, batch 1: 18.3 GiB peak, against 28
    GiB traced without collecting). So collections are spaced by 2 % of growth, at least `MIN_STEP` bytes, and
    the peak is exact to that much: uncollected cycles inflate it by less. (At 128 MiB the `small` network's
    checkpointed step at 512² was planned 20 % above the measured one; depth_pro_l's peaks do not change.)"""

    STEP = 0.02
    MIN_STEP = 8 * 2**20

    def __enter__(self) -> "LiveBytes":
        gc.freeze()  # what exists before the step is never garbage: collections then scan only the step's objects
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        gc.unfreeze()

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._collected_at = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage())
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        if storage in self._seen:
            return
        self._seen.add(storage)
        size = storage.nbytes()
        self.live += size
        weakref.finalize(storage, self._free, size)
        if self.live > self.peak:
            if self.live > self._collected_at + max(self.STEP * self._collected_at, self.MIN_STEP):
                gc.collect()
                self._collected_at = self.live
            self.peak = max(self.peak, self.live)

    def _free(self, size: int) -> None:
        self.live -= size


def cpu_attention_flops(query, key, value, *_, **__) -> int:
    """FLOPs of the fused CPU attention kernel the trace runs (torch counts the GPU kernels' only)."""
    return sdpa_flop_count(query, key, value)


def cpu_attention_backward_flops(grad_out, query, key, value, *_, **__) -> int:
    """FLOPs of the fused CPU attention kernel's backward."""
    return sdpa_backward_flop_count(grad_out, query, key, value)


ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward_flops,
}


@dataclass(frozen=True)
class StepTrace:
    """One traced training step: the peak bytes it allocated on top of the parameters (activations, gradients,
    temporaries) and its FLOPs (forward + backward + recomputation)."""

    peak_bytes: int
    flops: int


def fake_network(cfg: DepthProConfig, fake_mode: FakeTensorMode) -> torch.nn.Module:
    """The network with fake parameters: built on the meta device (timm's constructors read values with `.item()`,
    which fake tensors refuse), then given fake CPU storage."""
    with torch.device("meta"):
        network = build_depth_pro(cfg)
    with fake_mode:
        return network.to_empty(device="cpu")


def trace_step(network: torch.nn.Module, batch: int, precision: str, checkpointing: bool,
               fake_mode: FakeTensorMode) -> StepTrace:
    """Trace forward (under the precision's autocast), a float32 loss and backward of `batch` images through a
    fake `network`; gradients are dropped afterwards so that traces of one network are independent."""
    parallelize(network, None, activation_checkpointing=checkpointing)
    dtype = AUTOCAST.get(precision)
    with fake_mode:
        image = torch.empty(batch, 3, network.img_size, network.img_size)
        with LiveBytes() as memory, FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as flops:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                inverse_depth, fov = network(image)
            loss = inverse_depth.float().mean() + (fov.float().mean() if fov is not None else 0.0)
            loss.backward()
        network.zero_grad(set_to_none=True)
    return StepTrace(peak_bytes=memory.peak, flops=flops.get_total_flops())
