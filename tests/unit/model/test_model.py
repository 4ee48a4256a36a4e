"""The network computes what Apple's reference Depth Pro computes, with the released parameter layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dp_train.model import DepthProConfig, build_depth_pro, load_weights
from dp_train.model.network import merge_windows, split_windows
from tests.helpers.paths import FIXTURES


def fixture_input() -> torch.Tensor:
    """The deterministic 1536x1536 input documented in the fixture README."""
    size = 1536
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    r = torch.sin(xx / 37.0) * torch.cos(yy / 53.0)
    g = torch.sign(torch.sin(xx / 97.0 + yy / 131.0)) * 0.5
    b = torch.cos((xx + 2 * yy) / 211.0)
    return torch.stack([r, g, b]).float().unsqueeze(0).clamp(-1, 1)


def test_depth_pro_l_has_the_released_checkpoint_layout(fixtures_dir):
    manifest = json.loads((fixtures_dir / "apple_depth_pro_state_dict_manifest.json").read_text())
    with torch.device("meta"):
        model = build_depth_pro(DepthProConfig.preset("depth_pro_l"))
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert ours == manifest["tensors"]
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["num_parameters"] == 951_991_330


@pytest.fixture(scope="module")
def tiny_reference_run():
    """Our network with the fixture weights, run once on the fixture input."""
    model = build_depth_pro(DepthProConfig.preset("tiny")).eval()
    load_weights(model, FIXTURES / "tiny_depth_pro_state_dict.pt")
    x = fixture_input()
    with torch.no_grad():
        cid, fov = model(x)
    inferred = model.infer(x[0])
    return cid, fov, inferred, np.load(FIXTURES / "tiny_depth_pro_expected.npz")


def test_forward_matches_reference_outputs(tiny_reference_run):
    cid, fov, _, expected = tiny_reference_run
    assert cid.shape == (1, 1, 1536, 1536) and fov.shape == (1,)
    ours = {
        "canonical_inverse_depth_avgpool8": F.avg_pool2d(cid, 8)[0, 0],
        "canonical_inverse_depth_crop_280_408": cid[0, 0, 280:408, 280:408],
        "canonical_inverse_depth_mean": cid.mean(),
        "canonical_inverse_depth_std": cid.std(),
        "fov_deg": fov,
    }
    for name, value in ours.items():
        np.testing.assert_allclose(value.numpy(), expected[name].reshape(value.shape), atol=1e-3, rtol=0, err_msg=name)


def test_infer_matches_reference_metric_depth_and_focal(tiny_reference_run):
    _, _, inferred, expected = tiny_reference_run
    np.testing.assert_allclose(
        inferred["focallength_px"].numpy(), expected["infer_focallength_px"].reshape(()), atol=1e-3, rtol=0
    )
    np.testing.assert_allclose(
        inferred["depth"][280:408, 280:408].numpy(), expected["infer_depth_crop_280_408"], atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("vit_img_size", [128, 384])
def test_window_split_and_merge_reassemble_the_map_exactly(vit_img_size):
    """Merging the windows of a token map gives back the map: any off-by-one overlap or trim breaks this."""
    cfg = DepthProConfig.preset("tiny", vit_img_size=vit_img_size)
    g = cfg.grid_size
    for overlap, side in [(0.25, 4 * g), (0.5, 2 * g)]:
        tokens = torch.randn(2, 3, side, side)
        windows = split_windows(tokens, g, overlap)
        assert windows.shape[0] == 2 * (25 if overlap == 0.25 else 9)
        merged = merge_windows(windows, batch_size=2, trim=int(g * overlap) // 2)
        torch.testing.assert_close(merged, tokens, rtol=0, atol=0)


def test_windows_are_batched_window_major():
    """Window k of image b sits at k * B + b, the layout the merge and the reference use."""
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    windows = split_windows(x, 4, 0.5)
    torch.testing.assert_close(windows[0], x[0, :, :4, :4])
    torch.testing.assert_close(windows[1], x[1, :, :4, :4])
    torch.testing.assert_close(windows[2], x[0, :, :4, 2:6])


def test_small_configs_run_at_their_own_input_size(fast_cfg):
    model = build_depth_pro(fast_cfg).eval()
    with torch.no_grad():
        cid, fov = model(torch.rand(2, 3, 512, 512) * 2 - 1)
    assert cid.shape == (2, 1, 512, 512) and fov.shape == (2,)
    assert torch.isfinite(cid).all() and (cid >= 0).all()


def test_forward_rejects_a_wrong_input_size(fast_cfg):
    model = build_depth_pro(fast_cfg)
    with pytest.raises(ValueError, match=r"\(B, 3, 512, 512\)"):
        model(torch.zeros(1, 3, 500, 512))


def test_infer_resizes_any_image_and_uses_a_given_focal(fast_cfg):
    model = build_depth_pro(fast_cfg).eval()
    image = torch.rand(3, 90, 160) * 2 - 1
    estimated = model.infer(image)
    given = model.infer(image, f_px=2 * float(estimated["focallength_px"]))
    assert estimated["depth"].shape == (90, 160)
    assert float(given["focallength_px"]) == pytest.approx(2 * float(estimated["focallength_px"]))
    # Metric depth is proportional to the focal length (up to the inverse-depth clamp).
    unclamped = (estimated["depth"] > 1e-3) & (given["depth"] < 1e3)
    torch.testing.assert_close(given["depth"][unclamped], 2 * estimated["depth"][unclamped])


def test_without_fov_head_infer_needs_a_focal(fast_cfg):
    model = build_depth_pro(fast_cfg.replace(fov_head=False)).eval()
    assert model(torch.zeros(1, 3, 512, 512))[1] is None
    with pytest.raises(ValueError, match="no focal length"):
        model.infer(torch.zeros(3, 64, 64))
    assert model.infer(torch.zeros(3, 64, 64), f_px=50.0)["depth"].shape == (64, 64)


def test_fov_head_does_not_backpropagate_into_the_depth_network(fast_cfg):
    model = build_depth_pro(fast_cfg)
    _, fov = model(torch.rand(1, 3, 512, 512) * 2 - 1)
    fov.sum().backward()
    depth_grads = [p.grad for n, p in model.named_parameters() if not n.startswith("fov.")]
    assert all(g is None or not g.any() for g in depth_grads)
    assert model.fov.head[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"vit_img_size": 200}, "multiple of 8"),
        ({"hook_blocks": (1, 9)}, "hook_blocks"),
        ({"hook_blocks": (1, 0)}, "hook_blocks"),
        ({"num_heads": 3}, "divisible"),
        ({"patch_size": 8, "vit_img_size": 128}, "must be 16"),
    ],
)
def test_invalid_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        DepthProConfig.preset("tiny", **overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(KeyError, match="depth_pro_l"):
        DepthProConfig.preset("huge")


@pytest.mark.parametrize("seed", range(4))
def test_a_fresh_network_outputs_positive_depth_so_training_can_start(fast_cfg, seed):
    """A head whose final ReLU is dead on every pixel gets no gradient and never learns."""
    torch.manual_seed(seed)
    model = build_depth_pro(fast_cfg.replace(decoder_features=16, encoder_feature_dims=(8, 16, 32, 32)))
    cid, _ = model(torch.rand(1, 3, 512, 512) * 2 - 1)
    assert (cid > 0).float().mean() > 0.9
