"""Optimisation as the paper's Tab. 16: Adam without weight decay, the warm-up / constant / x0.1 schedule,
frozen pretrained LayerNorms, and a global batch size that holds on any number of GPUs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dp_train.cli.main import main
from dp_train.data.datamodule import DepthDataModule
from dp_train.losses.objective import Objective
from dp_train.train.module import DepthProModule
from dp_train.train.schedules import build_schedule, drop_legacy_state
from tests.helpers.kill_and_resume import (
    STEPS,
    assert_same_states,
    final_state,
    kill_when,
    resume_recipe,
    start_fit,
    step_done,
    write_resume_shards,
)
from tests.helpers.paths import REPO

NETWORK = {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}


def test_constant_step_schedule_has_the_papers_three_phases():
    """1 % linear warm-up, 80 % at the peak, the last 19 % at x0.1 (of 1000 steps: 10, 800, 190)."""
    schedule = build_schedule("constant_step", 0.01, 1000, 0.1, 0.81)
    lrs = [schedule(step) for step in range(1000)]
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert set(lrs[10:810]) == {1.0} and set(lrs[810:]) == {0.1}


def test_a_restarted_schedule_divides_the_remaining_steps_into_the_same_phases():
    schedule = build_schedule("constant_step", 0.01, 1000, 0.1, 0.81, restarts=[500])  # a reset_lr stage at 500
    lrs = [schedule(step) for step in range(500, 1000)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert set(lrs[5:405]) == {1.0} and set(lrs[405:]) == {0.1}


def test_cosine_schedule_stays_available_and_warmup_can_be_steps():
    schedule = build_schedule("cosine", 4, 104, 0.01, 0.81)
    assert schedule(0) == pytest.approx(0.25) and schedule(4) == pytest.approx(1.0)
    assert schedule(54) == pytest.approx(0.505) and schedule(103) == pytest.approx(0.01, abs=1e-3)


@pytest.mark.parametrize(("setting", "culprit"), [({"warmup_steps": 1.5}, "model.warmup_steps=1.5"),
                                                  ({"decay_at": 0.0}, "model.decay_at=0.0")])
def test_a_bad_schedule_setting_is_refused_naming_it(setting, culprit):
    with pytest.raises(ValueError, match=culprit):
        DepthProModule(preset="tiny", network=NETWORK, **setting)


def test_the_default_optimiser_is_adam_without_weight_decay_at_the_papers_learning_rates():
    optimizer = DepthProModule(preset="tiny", network=NETWORK).configure_optimizers()["optimizer"]
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.0}
    assert {group["lr"] for group in optimizer.param_groups} == {1.28e-5, 1.28e-4}


def vit_norms(module: DepthProModule) -> dict[str, torch.Tensor]:
    """Every LayerNorm parameter of the ViT encoders, by name, as a copy."""
    return {f"{i}.{name}": param.detach().clone()
            for i, vit in enumerate(module.net.vits()) for norm_name, norm in vit.named_modules()
            if isinstance(norm, nn.LayerNorm) for name, param in norm.named_parameters(prefix=norm_name)}


@pytest.mark.parametrize("mode", ["depth", "fov"])
def test_pretrained_layernorms_get_no_gradient_and_keep_their_values(mode):
    torch.manual_seed(0)
    module = DepthProModule(preset="tiny", network=NETWORK, mode=mode, lr_encoder=1e-2, lr_decoder=1e-2,
                            warmup_steps=0)
    before, encoder_before = vit_norms(module), module.net.vits()[-1].blocks[0].attn.qkv.weight.detach().clone()
    assert before
    optimizer = module.configure_optimizers()["optimizer"]
    image = torch.rand(2, 3, 512, 512) * 2 - 1
    batch = {"image": image, "target": torch.rand(2, 1, 512, 512) + 0.5, "valid": torch.ones(2, 1, 512, 512).bool(),
             "metric": torch.ones(2).bool(), "synthetic": torch.ones(2).bool(), "sparse": torch.zeros(2).bool(),
             "f_px": torch.tensor([300.0, 600.0])}
    module.objective(batch)[0]["loss"].backward()
    optimizer.step()
    norms = [p for vit in module.net.vits() for m in vit.modules() if isinstance(m, nn.LayerNorm)
             for p in m.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in norms)
    after = vit_norms(module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    if mode == "fov":  # the FOV ViT (the last one) is trained around its frozen norms
        assert not torch.equal(encoder_before, module.net.vits()[-1].blocks[0].attn.qkv.weight)


@pytest.mark.parametrize(("gpus", "accumulation"), [(8, 8), (16, 4), (64, 1)])
def test_global_batch_size_derives_the_gradient_accumulation(gpus, accumulation):
    trainer = SimpleNamespace(world_size=gpus, accumulate_grad_batches=1)
    assert DepthDataModule(batch_size=2, global_batch_size=128).gradient_accumulation(trainer) == accumulation


def test_a_global_batch_size_that_does_not_divide_is_one_error_line(tmp_path, capsys):
    recipe = ["--recipe", str(REPO / "recipes/quickstart.yaml"), "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    assert main(["fit", *recipe, "--data.global_batch_size=3"]) == 1  # 1 CPU x batch 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: data.global_batch_size=3 is not a multiple of world size 1 x data.batch_size 2 = 2"
    assert not any(line.startswith("Traceback") for line in err)


@pytest.mark.slow
def test_a_run_with_gradient_accumulation_resumes_exactly(tmp_path_factory):
    """Global batch 2 from batch 1 on one process: killed from outside after step 7, resumed, the same end state."""
    shards = write_resume_shards(tmp_path_factory.mktemp("shards"))
    whole, killed = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("killed")
    accumulate = "--data.global_batch_size=2"
    assert start_fit(whole, resume_recipe(whole, shards, 1), accumulate).wait(timeout=600) == 0, (
        (whole / "log.txt").read_text()[-3000:])
    saved = kill_when(killed, start_fit(killed, resume_recipe(killed, shards, 1), accumulate), step_done(killed, 7))
    assert saved == 6
    resumed = start_fit(killed, resume_recipe(killed, shards, 1), accumulate, "--ckpt_path", "last")
    assert resumed.wait(timeout=600) == 0, (killed / "log.txt").read_text()[-3000:]
    assert_same_states(final_state(killed), final_state(whole), "killed after step 7, resumed from step 6")
    loops = torch.load(whole / "ckpt" / "last.ckpt", weights_only=False)["loops"]["fit_loop"]
    assert loops["epoch_loop.batch_progress"]["total"]["ready"] == 2 * STEPS  # two batches per optimizer step


def test_with_a_later_restart_each_stage_gets_its_own_three_phases():
    """A curriculum restarting the schedule at step 600 of 1000: stage 1's phases fit its 600 steps."""
    schedule = build_schedule("constant_step", 0.01, 1000, 0.1, 0.81, restarts=[600])
    first = [schedule(step) for step in range(600)]
    assert first[:6] == pytest.approx([(i + 1) / 6 for i in range(6)])
    assert set(first[6:486]) == {1.0} and set(first[486:]) == {0.1}
    second = [schedule(step) for step in range(600, 1000)]
    assert second[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert set(second[4:324]) == {1.0} and set(second[324:]) == {0.1}


def test_the_schedule_is_a_pure_function_of_the_step_and_a_checkpoints_patched_state_is_dropped():
    """Evaluated in any order, the same multipliers; the `offset` / `ends` an earlier version saved are removed."""
    schedule = build_schedule("constant_step", 2, 12, 0.1, 0.81, restarts=[6])
    forwards = [schedule(step) for step in range(12)]
    assert [schedule(step) for step in reversed(range(12))] == forwards[::-1]
    checkpoint = {"lr_schedulers": [{"lr_lambdas": [dict(vars(schedule), offset=6, ends=[6])]}]}
    drop_legacy_state(checkpoint)
    assert checkpoint["lr_schedulers"][0]["lr_lambdas"][0] == vars(schedule)


def test_the_loss_is_float32_under_mixed_precision():
    """Lightning runs `training_step` under autocast; the objective switches it off, so bf16-mixed gives the same
    loss, to the bit, as float32 for the same prediction (only the network runs in half precision)."""
    torch.manual_seed(0)
    module = DepthProModule(preset="tiny", network=NETWORK, loss=Objective(mae=1.0, mage=1.0, msge=1.0))
    pred = torch.rand(2, 1, 512, 512) + 0.5
    module.net.forward = lambda image, with_fov=True: (pred, None)  # a fixed float32 prediction
    batch = {"image": torch.zeros(2, 3, 512, 512), "target": torch.rand(2, 1, 512, 512) + 0.5,
             "valid": torch.ones(2, 1, 512, 512).bool(), "metric": torch.ones(2).bool(),
             "synthetic": torch.ones(2).bool(), "sparse": torch.zeros(2).bool()}
    plain = module.objective(batch)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module.objective(batch)[0]
    assert all(torch.equal(plain[name], mixed[name]) and mixed[name].dtype == torch.float32 for name in plain)
