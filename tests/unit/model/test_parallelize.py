"""What `dp_train.model.parallelize` promises, without a Trainer: activation checkpointing trades memory for
time and changes no result; FSDP2 makes every block a unit and computes the same as the plain network; what
cannot run beside FSDP is refused in one line."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from dp_train.model import build_depth_pro
from dp_train.model.parallelize import blocks, parallelize, refuse_beside_fsdp

FLOAT32_RTOL = 64 * torch.finfo(torch.float32).eps
"""A few dozen roundings of float32: the same sums, accumulated in another order (recomputation, sharding)."""


def loss_and_grads(model, x):
    """Forward + backward of a depth and FOV loss; returns the loss and every parameter's gradient."""
    cid, fov = model(x)
    loss = cid.mean() + fov.mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def count_block_calls(model) -> list[int]:
    """A counter that every ViT block's `forward` increments (recomputation calls `forward`, not the hooks)."""
    calls = [0]

    def counted(forward):
        def run(*args, **kwargs):
            calls[0] += 1
            return forward(*args, **kwargs)
        return run

    for vit in model.vits():
        for block in vit.blocks:
            block.forward = counted(block.forward)
    return calls


def test_activation_checkpointing_recomputes_every_vit_block_and_gives_the_same_gradients(fast_cfg):
    state = build_depth_pro(fast_cfg).state_dict()
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    plain, checkpointed = build_depth_pro(fast_cfg), build_depth_pro(fast_cfg)
    plain.load_state_dict(state)
    checkpointed.load_state_dict(state)
    parallelize(checkpointed, None, activation_checkpointing=True)
    plain_calls, checkpointed_calls = count_block_calls(plain), count_block_calls(checkpointed)

    loss, grads = loss_and_grads(plain, x)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, x)

    assert checkpointed_calls[0] == 2 * plain_calls[0] > 0  # every block runs again during backward
    assert checkpointed.state_dict().keys() == state.keys()  # checkpoints load either way
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert (grads[name] is None) == (grads_ckpt[name] is None), name
        if grads[name] is not None:
            torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=FLOAT32_RTOL, atol=1e-7, msg=name)


@pytest.fixture
def one_process_group(tmp_path):
    """A 1-process gloo group (CPU), torn down after the test."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    dist.destroy_process_group()


def test_fsdp_makes_every_block_a_unit_and_computes_as_the_plain_network(fast_cfg, one_process_group):
    plain = build_depth_pro(fast_cfg)
    sharded = build_depth_pro(fast_cfg)
    sharded.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 512, 512) * 2 - 1

    assert parallelize(sharded, one_process_group, "float32") is sharded
    assert parallelize(sharded, one_process_group, "float32") is sharded  # a second call changes nothing

    assert isinstance(sharded, FSDPModule) and all(isinstance(block, FSDPModule) for block in blocks(sharded))
    loss, grads = loss_and_grads(plain, x)
    loss_sharded, grads_sharded = loss_and_grads(sharded, x)
    torch.testing.assert_close(loss_sharded, loss, rtol=FLOAT32_RTOL, atol=0)
    for name, grad in grads_sharded.items():
        if grad is not None:
            torch.testing.assert_close(grad.full_tensor(), grads[name], rtol=FLOAT32_RTOL, atol=1e-7, msg=name)


def test_weight_averaging_is_refused_under_fsdp_in_one_line_and_allowed_otherwise():
    with pytest.raises(ValueError) as refused:
        refuse_beside_fsdp(ModelParallelStrategy(), [EMAWeightAveraging()])
    assert str(refused.value) == ("EMAWeightAveraging (trainer.callbacks) cannot run under FSDP "
                                  "(ModelParallelStrategy): it deep-copies the sharded model; remove it or use DDP")
    refuse_beside_fsdp(DDPStrategy(), [EMAWeightAveraging()])


def test_recipe_switches_reach_the_network_with_the_memory_format_before_compile(fast_cfg):
    """`model.channels_last` and `model.compile` are applied by `configure_model`: convolution weights NHWC, every
    block compiled on its own (regional), parameter names unchanged so checkpoints still load strictly."""
    from dp_train.train.module import DepthProModule

    module = DepthProModule(preset="tiny", network={"vit_img_size": fast_cfg.vit_img_size}, compile=True,
                            channels_last=True)
    names = [name for name, _ in module.net.named_parameters()]
    module.configure_model()
    convolution = module.net.decoder.fusions[0].resnet1.residual[1]
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(block._compiled_call_impl is not None for block in blocks(module.net))
    assert [name for name, _ in module.net.named_parameters()] == names


def test_without_the_switches_the_network_stays_eager_and_contiguous(fast_cfg):
    from dp_train.train.module import DepthProModule

    module = DepthProModule(preset="tiny", network={"vit_img_size": fast_cfg.vit_img_size})
    module.configure_model()
    assert all(block._compiled_call_impl is None for block in blocks(module.net))
    assert module.net.decoder.fusions[0].resnet1.residual[1].weight.is_contiguous()
