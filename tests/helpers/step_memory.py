"""What a real training step holds in memory, per process, as the operating system sees it: run as
`python -m tests.helpers.step_memory PRESET VIT_IMG_SIZE BATCH PRECISION CHECKPOINTING STRATEGY` (STRATEGY:
`single`, or `ddp` / `fsdp` under torchrun with gloo). Each process prints `peak RANK BYTES`: the peak resident
set of a steady-state step (forward, float32 loss, backward, AdamW), above what the process held before building
the network, so it counts the weights, gradients, AdamW state and DDP buckets (or FSDP2's shards) as the planner
(dp_train/planning) does.

Run with glibc's mmap threshold pinned (`MALLOC_MMAP_THRESHOLD_=65536`): every allocation above 64 KiB is then
mapped on its own and returned when freed, so the resident set follows the live tensors. Steps run before the
measured one until it is steady: AdamW's state appears at the first, and DDP rebuilds its buckets at the second
(fresh pages count only once written, which a GPU's allocator does not wait for); one process's and FSDP2's
second and third steps peaked alike (within 2 MiB)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from dp_train.model import DepthProConfig, build_depth_pro
from dp_train.model.parallelize import parallelize
from dp_train.planning.trace import AUTOCAST

WARM_STEPS = {"ddp": 2, "fsdp": 1, "single": 1}


def resident_bytes() -> int:
    """The process's resident set now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def peak_resident_bytes() -> int:
    """The kernel's peak resident set (VmHWM) since it was last reset."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status.read().splitlines())
    return int(fields["VmHWM"].split()[0]) * 1024


def reset_peak() -> None:
    """Start the kernel's peak resident set again from the present one."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def build(preset: str, vit_img_size: int, checkpointing: bool, strategy: str) -> tuple[torch.nn.Module, int]:
    """The network as `strategy` wraps it for training, and its input size."""
    network = build_depth_pro(DepthProConfig.preset(preset, vit_img_size=vit_img_size))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),)) if strategy == "fsdp" else None
    parallelize(network, mesh, activation_checkpointing=checkpointing)
    model = DistributedDataParallel(network) if strategy == "ddp" else network
    return model, network.img_size


def measure(preset: str, vit_img_size: int, batch: int, precision: str, checkpointing: bool, strategy: str) -> int:
    """Peak resident bytes of a steady-state training step above the process before the network existed."""
    before = resident_bytes()
    torch.manual_seed(0)
    model, size = build(preset, vit_img_size, checkpointing, strategy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    image = torch.rand(batch, 3, size, size)
    dtype = AUTOCAST.get(precision)
    for step in range(WARM_STEPS[strategy] + 1):
        if step == WARM_STEPS[strategy]:
            reset_peak()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            inverse_depth, fov = model(image)
        (inverse_depth.float().mean() + fov.float().mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return peak_resident_bytes() - before


def main(argv: list[str]) -> None:
    """Print this process's peak step bytes."""
    preset, vit_img_size, batch, precision, checkpointing, strategy = argv
    if strategy != "single":
        dist.init_process_group("gloo")
    peak = measure(preset, int(vit_img_size), int(batch), precision, checkpointing == "1", strategy)
    print(f"peak {dist.get_rank() if dist.is_initialized() else 0} {peak}", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
