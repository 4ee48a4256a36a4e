"""Fine-tuning by part: `model.freeze` keeps named parts as loaded and out of the optimizer; `model.lora` starts as
the loaded network, trains only its low-rank factors in the adapted ViTs and merges into
Apple's layout wherever weights are read (export, `init_from`, evaluating its checkpoint without LoRA); the start
of a run says what trains; `export --interpolate-from` mixes start and fine-tuned weights exactly. Exact resume of a
LoRA run under DDP: tests/integration/test_resume.py."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from dp_train.cli.main import main
from dp_train.model import load_weights, save_weights
from dp_train.model.lora import LoraConfig, merge_lora
from dp_train.model.parallelize import refuse_beside_fsdp
from dp_train.model.weights import read_state_dict
from dp_train.train.module import DepthProModule, build_network
from dp_train.train.trainable import PARTS, trainable_summary

NETWORK = {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32], "fov_head": True}
LORA = {"rank": 4, "alpha": 8.0, "encoders": ["patch_encoder", "image_encoder"], "lr": 1e-3}


def module(**kwargs) -> DepthProModule:
    """A tiny depth-mode module with an FOV head (frozen in depth mode), ViT norms trainable."""
    return DepthProModule(preset="tiny", network=NETWORK, freeze_vit_norms=False, warmup_steps=0, **kwargs)


def optimized(m: DepthProModule) -> set[int]:
    """ids of the parameters the module's optimizer steps."""
    return {id(p) for group in m.configure_optimizers()["optimizer"].param_groups for p in group["params"]}


def scramble_factors(m: DepthProModule) -> None:
    """Give every LoRA factor nonzero values, as training would (B starts at zero)."""
    torch.manual_seed(3)
    for name, param in m.net.named_parameters():
        if name.endswith(".lora_b"):
            param.data.normal_(std=0.05)


def test_frozen_parts_keep_their_values_out_of_the_optimizer_and_the_rest_trains():
    m = module(freeze=["patch_encoder", "decoder"])
    frozen = {name for name, p in m.net.named_parameters() if not p.requires_grad}
    expected = {name for name, _ in m.net.named_parameters()
                if name.startswith(PARTS["patch_encoder"] + PARTS["decoder"] + ("fov.",))}  # depth mode: FOV frozen
    assert frozen == expected
    ids = optimized(m)
    params = dict(m.net.named_parameters())
    assert ids == {id(params[name]) for name in params if name not in frozen}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"freeze": ["encoder"]}, "model.freeze names 'encoder': choose from"),
    ({"freeze": list(PARTS)}, "leaves nothing of the network to train"),
    ({"lora": LoraConfig(rank=0)}, "model.lora.rank=0"),
    ({"lora": LoraConfig(targets=["qkv", "mlp"])}, "model.lora.targets"),
])
def test_a_bad_freeze_or_lora_setting_is_one_error_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        module(**kwargs)


def test_a_bad_lora_setting_in_a_recipe_is_one_error_line(tmp_path, capsys):
    assert main(["fit", "--model.preset", "tiny", "--model.lora.rank", "0", "--trainer.accelerator", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "model.lora.rank=0" in err[0]


def test_lora_starts_as_the_loaded_network_and_trains_only_factors_and_unfrozen_parts(tmp_path):
    start = tmp_path / "start.safetensors"
    save_weights(build_network("tiny", NETWORK), start)
    plain, adapted = module(init_from=str(start)), module(init_from=str(start), lora=LoraConfig(**LORA))
    image = torch.rand(1, 3, 512, 512) * 2 - 1
    torch.testing.assert_close(adapted(image)[0], plain(image)[0], rtol=0, atol=0)  # B = 0: W + 0 is W exactly
    trained = {name for name, p in adapted.net.named_parameters() if p.requires_grad}
    assert trained and all(not name.startswith(PARTS["patch_encoder"] + PARTS["image_encoder"]) or
                           name.endswith((".lora_a", ".lora_b")) for name in trained)
    assert any(name.startswith("decoder.") for name in trained)
    groups = adapted.configure_optimizers()["optimizer"].param_groups
    lora = next(group for group in groups if group["name"] == "lora")
    assert lora["lr"] == LORA["lr"] and lora["weight_decay"] == 0.0
    assert len(lora["params"]) == 2 * 4 * adapted.net.config.depth * 2  # A, B x (qkv, proj, fc1, fc2) x blocks x ViTs


def test_the_start_of_a_run_says_what_trains_and_what_adamw_holds():
    m = module(freeze=["image_encoder"], lora=LoraConfig(**LORA | {"encoders": ["patch_encoder"]}))
    line = trainable_summary(m.net)
    trained = sum(p.numel() for p in m.net.parameters() if p.requires_grad)
    factors = sum(p.numel() for n, p in m.net.named_parameters() if n.endswith((".lora_a", ".lora_b")))
    assert f"trainable parameters: {trained / 1e6:.2f} M" in line and f"lora {factors / 1e6:.2f} M" in line
    assert "image_encoder" not in line and "patch_encoder" not in line
    assert f"AdamW state {trained * 8 / 2**20:.0f} MiB" in line


def test_merged_lora_weights_load_strictly_into_apples_layout_and_compute_the_same_function():
    adapted = module(lora=LoraConfig(**LORA | {"encoders": ["patch_encoder", "image_encoder", "fov_encoder"]}))
    scramble_factors(adapted)
    merged = merge_lora(adapted.net.state_dict())
    plain = build_network("tiny", NETWORK)
    assert sorted(merged) == sorted(plain.state_dict())
    plain.load_state_dict(merged, strict=True)
    image = torch.rand(1, 3, 512, 512) * 2 - 1
    adapted.eval(), plain.eval()
    with torch.no_grad():
        (depth_a, fov_a), (depth_p, fov_p) = adapted(image), plain(image)
    # the same float32 weights either way (merged once vs recomputed per call): equal up to float32 rounding
    torch.testing.assert_close(depth_p, depth_a, rtol=1e-5, atol=1e-5 * depth_a.abs().max().item())
    torch.testing.assert_close(fov_p, fov_a, rtol=1e-5, atol=1e-4)


def test_a_lora_checkpoint_is_evaluated_by_a_recipe_without_lora():
    adapted = module(lora=LoraConfig(**LORA))
    scramble_factors(adapted)
    checkpoint = {"state_dict": {k: v.clone() for k, v in adapted.state_dict().items()}}
    plain = module()
    plain.on_load_checkpoint(checkpoint)
    plain.load_state_dict(checkpoint["state_dict"], strict=True)
    expected = merge_lora(adapted.net.state_dict())
    assert all(torch.equal(plain.net.state_dict()[k], v) for k, v in expected.items())


def test_lora_under_fsdp_is_refused_in_one_line_and_allowed_under_ddp():
    with pytest.raises(ValueError, match="model.lora cannot run under FSDP"):
        refuse_beside_fsdp(ModelParallelStrategy(), [], LoraConfig())
    refuse_beside_fsdp(DDPStrategy(), [], LoraConfig())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_export_interpolates_start_and_fine_tuned_weights_tensor_by_tensor(tmp_path, alpha):
    torch.manual_seed(0)
    save_weights(build_network("tiny", NETWORK), start := tmp_path / "start.safetensors")
    save_weights(build_network("tiny", NETWORK), tuned := tmp_path / "tuned.safetensors")
    out = tmp_path / "mixed.pt"
    assert main(["export", "--ckpt", str(tuned), "--out", str(out), "--interpolate-from", str(start),
                 "--alpha", str(alpha)]) == 0
    a, b, mixed = read_state_dict(start), read_state_dict(tuned), read_state_dict(out)
    for key, value in mixed.items():  # torch.lerp in float32: exact at the ends, one rounding between
        torch.testing.assert_close(value, a[key] + alpha * (b[key] - a[key]), rtol=2**-23, atol=2**-23)
    load_weights(build_network("tiny", NETWORK), out, strict=True)


@pytest.mark.parametrize(("extra", "message"), [
    (["--alpha", "0.5"], "--interpolate-from and --alpha go together"),
    (["--interpolate-from", "START", "--alpha", "1.5"], "--alpha 1.5 must lie in [0, 1]"),
    (["--interpolate-from", "OTHER", "--alpha", "0.5"], "is not the fine-tuned network's start"),
])
def test_a_bad_interpolation_is_one_error_line_and_writes_nothing(tmp_path, capsys, extra, message):
    save_weights(build_network("tiny", NETWORK), tuned := tmp_path / "tuned.safetensors")
    save_weights(build_network("tiny", NETWORK | {"fov_head": False}), other := tmp_path / "other.safetensors")
    extra = [str(tuned) if e == "START" else str(other) if e == "OTHER" else e for e in extra]
    assert main(["export", "--ckpt", str(tuned), "--out", str(tmp_path / "out.pt"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "out.pt").exists()
