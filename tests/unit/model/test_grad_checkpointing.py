"""Activation checkpointing of every ViT block changes memory, not results."""

from __future__ import annotations

import torch

from dp_train.model import build_depth_pro


def loss_and_grads(cfg, state, x):
    """Forward + backward of a depth and FOV loss; returns the loss and every parameter's gradient."""
    model = build_depth_pro(cfg)
    model.load_state_dict(state)
    cid, fov = model(x)
    loss = cid.mean() + fov.mean()
    loss.backward()
    return model, loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_checkpointed_blocks_give_the_same_gradients(fast_cfg):
    state = build_depth_pro(fast_cfg).state_dict()
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    _, loss, grads = loss_and_grads(fast_cfg, state, x)
    model, loss_ckpt, grads_ckpt = loss_and_grads(fast_cfg.replace(grad_checkpointing=True), state, x)

    assert all(vit.grad_checkpointing for vit in model.vits())
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert (grads[name] is None) == (grads_ckpt[name] is None), name
        if grads[name] is not None:
            torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
