"""How the network runs across devices, applied from outside it: FSDP2 units, their mixed-precision policy,
activation checkpointing and regional `torch.compile`; and what cannot run beside FSDP, refused before any work.

`parallelize` needs no Trainer: `DepthProModule.configure_model` calls it with the strategy's device mesh, and
benchmarks and distributed tests call it on a bare network. The network itself stays free of all of this, so
its module and parameter names (hence checkpoints) are the same however it is run.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

ParamDtype = Literal["bfloat16", "float16", "float32"]
"""Compute dtype of parameters under FSDP2 (`model.fsdp_param_dtype`)."""


def blocks(network: nn.Module) -> list[nn.Module]:
    """The network's repeated blocks: every ViT block and every decoder fusion stage (the units FSDP2 shards
    and compile compiles one by one)."""
    return [block for vit in network.vits() for block in vit.blocks] + list(network.decoder.fusions)


def parallelize(
    network: nn.Module,
    mesh: DeviceMesh | None,
    param_dtype: ParamDtype = "bfloat16",
    activation_checkpointing: bool = False,
    compile: bool = False,
    channels_last: bool = False,
) -> nn.Module:
    """Apply activation checkpointing, channels_last weights, then regional compile, then FSDP2 sharding (with a
    `mesh`) to `network`, in place; returns it. Calling it again on a sharded network changes nothing (Lightning calls
    `configure_model` once per `fit`/`validate`/`test`).

    Activation checkpointing recomputes each ViT block's activations during backward instead of keeping them:
    memory for time, same results. Compile compiles each block on its own (regional), which compiles once per
    distinct block and keeps parameter names; it must come after the memory format, since the compiled graphs
    assume the weights' strides (converting afterwards fails an assertion on a GPU). channels_last stores the
    convolution weights NHWC, which cuDNN's convolutions prefer. Under FSDP2 each block is its own `fully_shard` unit (its
    parameters gathered just before it runs and freed after) and the rest belongs to the root unit; parameters
    compute in `param_dtype` while gradient reduction and the sharded float32 master weights the optimizer
    updates stay float32. Without a mesh, mixed precision is the Trainer's `precision` (autocast).
    """
    if isinstance(network, FSDPModule):
        return network
    for vit in network.vits():
        vit.set_grad_checkpointing(activation_checkpointing)
    if channels_last:
        network.to(memory_format=torch.channels_last)
    if compile:
        for block in blocks(network):
            block.compile()
    if mesh is not None:
        shard(network, data_parallel(mesh), param_dtype)
    return network


def data_parallel(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh's `data_parallel` dimension when it is named (Lightning's ModelParallelStrategy), else the mesh."""
    names = mesh.mesh_dim_names or ()
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def shard(network: nn.Module, mesh: DeviceMesh, param_dtype: ParamDtype) -> None:
    """Make every block an FSDP2 unit, then the network the root unit, under one mixed-precision policy."""
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype), reduce_dtype=torch.float32)
    for block in blocks(network):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(network, mesh=mesh, mp_policy=policy)


def refuse_beside_fsdp(strategy: Any, callbacks: list, lora: Any = None) -> None:
    """Raise one ValueError naming what cannot run when `strategy` shards the model with FSDP2: EMAWeightAveraging
    (any WeightAveraging) deep-copies the model, which sharded modules refuse (a traceback on every rank once
    training starts); LoRA's parametrized layers would be sharded as their merged weight, not as W, A and B."""
    if not isinstance(strategy, ModelParallelStrategy):
        return
    if lora is not None:
        raise ValueError("model.lora cannot run under FSDP (ModelParallelStrategy): use DDP, which LoRA's small "
                         "optimizer state suits, or train without LoRA")
    for callback in callbacks:
        if isinstance(callback, WeightAveraging):
            raise ValueError(f"{type(callback).__name__} (trainer.callbacks) cannot run under FSDP "
                             "(ModelParallelStrategy): it deep-copies the sharded model; remove it or use DDP")
