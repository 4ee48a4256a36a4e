"""Sharded (FSDP) checkpoint directories: genuine ones load; crafted ones never run code and fail in one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dp_train.cli.main import main
from dp_train.model import build_depth_pro, load_weights
from dp_train.model.weights import read_state_dict
from dp_train.runtime.sharded import restore_sharded
from tests.helpers.checkpoints import HPARAMS, Holder, Payload, write_sharded


def trained(fast_cfg) -> tuple[Holder, torch.optim.Optimizer]:
    """A tiny network after one optimizer step (so the optimizer has state to save)."""
    holder = Holder(build_depth_pro(fast_cfg))
    optimizer = torch.optim.AdamW(holder.parameters(), lr=1e-3)
    sum(p.sum() for p in holder.parameters()).backward()
    optimizer.step()
    return holder, optimizer


@pytest.fixture
def genuine(tmp_path, fast_cfg) -> tuple[Path, Holder, torch.optim.Optimizer]:
    """A sharded checkpoint directory of a trained tiny network, and what it was written from."""
    holder, optimizer = trained(fast_cfg)
    return write_sharded(tmp_path / "last.ckpt", holder, optimizer), holder, optimizer


def crafted(kind: str, tmp_path: Path, fast_cfg) -> Path:
    """A checkpoint directory whose reading would create `tmp_path/MARKER`: in `.metadata`, in a non-tensor entry
    of the shards (the optimizer's learning rate), or in Lightning's `meta.pt`."""
    path, payload = tmp_path / f"{kind}.ckpt", Payload(tmp_path / "MARKER")
    holder, optimizer = trained(fast_cfg)
    write_sharded(path, holder, optimizer, lr=payload if kind == "entry" else None,
                  meta={"hyper_parameters": payload} if kind == "meta" else None)
    if kind == "metadata":
        (path / ".metadata").write_bytes(pickle.dumps(payload))
    return path


def tiny_recipe(tmp_path: Path) -> Path:
    """A recipe for the tiny network whose data need not exist (the runs must stop before reading it)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": {"logger": False},
                                      "model": {"preset": "tiny", "network": {"vit_img_size": 128}},
                                      "data": {"train_sources": [{"name": "x", "urls": "missing.tar"}]}}))
    return recipe


def entry_points(tmp_path: Path, path: Path) -> dict[str, list[str]]:
    """Every command line that reads weights or a checkpoint, given `path`."""
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    recipe = str(tiny_recipe(tmp_path))
    return {
        "export --ckpt": ["export", "--ckpt", str(path), "--out", str(tmp_path / "out.pt")],
        "predict --weights": ["predict", "--weights", str(path), "--input", str(tmp_path / "in.png"), "--output",
                              str(tmp_path / "pred"), "--preset", "tiny", "--vit-img-size", "128", "--device", "cpu"],
        "fit --weights": ["fit", "--recipe", recipe, "--weights", str(path)],
        "fit --model.init_from": ["fit", "--recipe", recipe, "--model.init_from", str(path)],
        "fit --ckpt_path": ["fit", "--recipe", recipe, "--ckpt_path", str(path)],
        "validate --ckpt_path": ["validate", "--recipe", recipe, "--ckpt_path", str(path)],
    }


def assert_one_error_line(err: str, culprit: Path) -> None:
    """The run said what is wrong in exactly one `error:` line naming `culprit`, without a traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(culprit) in errors[0], err[-2000:]
    assert "Traceback" not in err, err[-2000:]


KINDS = ("metadata", "entry", "meta")
COMMANDS = ("export --ckpt", "predict --weights", "fit --weights", "fit --model.init_from", "fit --ckpt_path",
            "validate --ckpt_path")
CASES = [(kind, command) for kind in KINDS for command in COMMANDS
         if not (kind == "entry" and command.endswith("--ckpt_path"))]
"""Every payload on every command, but for `--ckpt_path` with a payload in the shards' entries: only FSDP's
`restore_sharded` reads those (test_restoring_a_crafted_directory_runs_no_code); these single-process runs refuse
a sharded `--ckpt_path` without reading its shards, after setting up their data."""


@pytest.mark.parametrize(("kind", "command"), CASES)
def test_a_crafted_checkpoint_directory_runs_no_code_and_fails_in_one_line(tmp_path, fast_cfg, capsys, kind,
                                                                           command):
    path = crafted(kind, tmp_path, fast_cfg)
    assert main(entry_points(tmp_path, path)[command]) != 0
    assert not (tmp_path / "MARKER").exists()
    assert_one_error_line(capsys.readouterr().err, path)


@pytest.mark.parametrize("kind", KINDS)
def test_restoring_a_crafted_directory_runs_no_code(tmp_path, fast_cfg, kind):
    path = crafted(kind, tmp_path, fast_cfg)
    holder, optimizer = trained(fast_cfg)
    with pytest.raises(ValueError, match=f"cannot read sharded checkpoint {path}: UnpicklingError"):
        restore_sharded(path, holder, [optimizer])
    assert not (tmp_path / "MARKER").exists()


def test_a_genuine_directory_restores_model_optimizer_and_training_state(genuine, fast_cfg):
    path, saved, saved_optimizer = genuine
    holder, optimizer = trained(fast_cfg.replace())
    torch.nn.init.zeros_(holder.net.head[0].weight)
    meta = restore_sharded(path, holder, [optimizer])
    assert meta == {"hyper_parameters": HPARAMS, "global_step": 7}
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(holder.state_dict()[name], value, rtol=0, atol=0, msg=name)
    for (_, a), (_, b) in zip(sorted(saved_optimizer.state_dict()["state"].items()),
                              sorted(optimizer.state_dict()["state"].items())):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=0)


def test_a_genuine_directory_exports_the_network_exactly(genuine, tmp_path, fast_cfg):
    path, saved, _ = genuine
    out = tmp_path / "model.safetensors"
    assert main(["export", "--ckpt", str(path), "--out", str(out)]) == 0
    net = build_depth_pro(fast_cfg)
    load_weights(net, out)  # strict: exactly the network's tensors
    for name, value in saved.net.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("damage", ["truncated shard", "truncated .metadata", "missing shard"])
def test_a_damaged_directory_is_one_error_line(genuine, tmp_path, capsys, damage):
    path = genuine[0]
    shard = next(path.glob("*.distcp"))
    if damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:1000])
    elif damage == "truncated .metadata":
        (path / ".metadata").write_bytes((path / ".metadata").read_bytes()[:300])
    else:
        shard.unlink()
    with pytest.raises(ValueError, match=f"cannot read sharded checkpoint {path}"):
        read_state_dict(path)
    assert main(["export", "--ckpt", str(path), "--out", str(tmp_path / "out.pt")]) == 2
    assert_one_error_line(capsys.readouterr().err, path)
