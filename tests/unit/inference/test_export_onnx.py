"""`dp_train export --format onnx`: a graph that ONNX Runtime runs like PyTorch, with its figures, written only
when it passes the parity check, and loadable after its folder moves (external weights referenced relatively)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dp_train.cli.main import main
from dp_train.inference import onnx_export
from dp_train.inference.onnx_parity import UNIT_ROUNDOFF, compare, torch_outputs
from dp_train.model import DepthProConfig, build_depth_pro, load_weights, save_weights

CONFIG = DepthProConfig.preset("tiny", vit_img_size=128, depth=2)  # 2 blocks per ViT: what is exported is the same
SIZE = CONFIG.img_size


def tiny_network() -> torch.nn.Module:
    """The test network (random, seeded), 512 x 512 input, with an FOV head."""
    torch.manual_seed(0)
    return build_depth_pro(CONFIG).eval()


def run_export(*argv: str) -> tuple[int, str, str]:
    """`dp_train export ...` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["export", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network's weights, as `export` reads them (the .safetensors records the network's shape)."""
    for name in onnx_export.EXTRA:
        pytest.importorskip(name, reason="the optional extra: pip install -e '.[onnx]'")
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(tiny_network(), path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> dict:
    """One export of the tiny network, weights forced into <out>.data, checked on one random image and one file."""
    root = tmp_path_factory.mktemp("onnx")
    photo = root / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(photo)
    out = root / "export" / "model.onnx"
    code, stdout, stderr = run_export("--ckpt", str(weights), "--out", str(out), "--format", "onnx", "--external-data",
                                      "--parity-images", "1", "--parity-image", str(photo))
    return {"root": root, "weights": weights, "out": out, "code": code, "stdout": stdout, "stderr": stderr}


@pytest.mark.slow
def test_round_trip_writes_the_graph_its_weights_and_its_figures(exported):
    import onnxruntime

    assert exported["code"] == 0, exported["stderr"]
    out = exported["out"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data", "model.onnx.json"]
    sidecar = json.loads((out.parent / "model.onnx.json").read_text())
    assert sidecar["opset"] >= 17 and sidecar["versions"]["onnxruntime"] == onnxruntime.__version__
    assert sidecar["files"] == {p.name: p.stat().st_size for p in (out, out.parent / "model.onnx.data")}
    assert sidecar["external_data"] == "model.onnx.data" and sidecar["export_seconds"] > 0
    assert sidecar["parity"]["images"] == 2
    assert sidecar["parity"]["image_files"] == [str(exported["root"] / "photo.png")]
    assert set(sidecar["parity"]["outputs"]) == {"canonical_inverse_depth", "fov_deg"}
    for figures in sidecar["parity"]["outputs"].values():
        assert 0 <= figures["max_abs"] <= figures["bound_abs"] and figures["max_rel"] <= figures["bound_rel"]
        assert figures["bound_rel"] >= 8 * UNIT_ROUNDOFF  # never tighter than 8 float32 roundings of the scale


@pytest.mark.slow
def test_the_moved_folder_runs_batches_of_1_and_3_like_pytorch(exported, tmp_path):
    import onnx
    import onnxruntime

    assert exported["code"] == 0, exported["stderr"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(exported["out"].parent, moved)  # the module's folder stays for the other tests
    graph_file = moved / "model.onnx"
    proto = onnx.load(str(graph_file), load_external_data=False)
    locations = {entry.value for tensor in proto.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    assert locations == {"model.onnx.data"}  # relative: the folder can move
    onnx.checker.check_model(str(graph_file))
    session = onnxruntime.InferenceSession(str(graph_file), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape] == ["batch", 3, SIZE, SIZE]
    net = tiny_network()
    load_weights(net, exported["weights"])
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = torch_outputs(onnx_export.Graph(net), images, torch.float32)
    # The export's bound, relative to each output's scale, derived from float32 arithmetic on its check images
    bound_rel = {name: f["bound_rel"] for name, f in json.loads((moved / "model.onnx.json").read_text())["parity"][
        "outputs"].items()}
    for batch in (images[:1], images):
        outputs = session.run(None, {"image": batch.numpy()})
        assert [o.shape for o in outputs] == [(len(batch), 1, SIZE, SIZE), (len(batch),)]
        for (name, bound), values, reference in zip(bound_rel.items(), outputs, expected):
            reference = reference[: len(batch)]
            assert np.abs(values - reference).max() <= bound * np.abs(reference).max(), name


@pytest.mark.slow
def test_a_graph_off_by_more_than_the_bound_is_refused_and_nothing_is_left(exported, tmp_path, monkeypatch):
    import onnx

    assert exported["code"] == 0, exported["stderr"]

    def broken_export(source: Path, shape: dict, path: Path, external: bool) -> None:
        """The good graph with the depth head's last weights 1 % too large."""
        proto = onnx.load(str(exported["out"]))
        tensor = next(t for t in proto.graph.initializer if t.name == "net.head.4.weight")
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * 1.01, tensor.name))
        onnx.save(proto, str(path))

    monkeypatch.setattr(onnx_export, "export_in_child", broken_export)
    kept = tmp_path / "kept.onnx"
    kept.write_bytes(b"an earlier export")
    runs = ((tmp_path / "new" / "deeper" / "model.onnx", ()), (kept, ("--overwrite", "--max-rel-error", "1e-3")))
    for out, extra in runs:  # the derived bound, then a given one (no float64 pass)
        code, _, stderr = run_export("--ckpt", str(exported["weights"]), "--out", str(out), "--parity-images", "1",
                                     *extra)
        assert code == 2
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: the ONNX graph does not reproduce")
        assert "canonical_inverse_depth max abs error" in stderr and "fov_deg" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.onnx"]  # no staging folder, no created folders
    assert kept.read_bytes() == b"an earlier export"


@pytest.mark.slow
def test_a_killed_export_leaves_nothing_behind(weights, tmp_path, monkeypatch):
    def killed_export(source: Path, shape: dict, path: Path, external: bool) -> None:
        """Half a graph written, then SIGTERM (a scheduler's time limit, `kill`)."""
        path.write_bytes(b"half a graph")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(onnx_export, "export_in_child", killed_export)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        run_export("--ckpt", str(weights), "--out", str(tmp_path / "new" / "model.onnx"), "--parity-images", "1")
    assert stop.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) == handler


@pytest.mark.slow
def test_an_exporter_that_fails_in_its_process_is_one_error(tmp_path):
    with pytest.raises(ValueError) as failed:
        onnx_export.export_in_child(tmp_path / "gone.safetensors", {}, tmp_path / "m.onnx", external=False)
    assert str(failed.value) == ("torch's ONNX exporter failed (exit code 1): FileNotFoundError: weights file not "
                                 f"found: {tmp_path / 'gone.safetensors'}")
    assert list(tmp_path.iterdir()) == []


def test_the_bound_refuses_outputs_off_by_more_than_it():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(2, 1, 8, 8)) * 10
    torch32 = exact.astype(np.float32)
    within = compare(torch32 + np.float32(1e-6), torch32, exact)
    assert within.passed and within.float32_error <= UNIT_ROUNDOFF * within.scale
    off = compare(torch32 + np.float32(2 * within.bound_abs), torch32, exact)
    assert not off.passed and off.max_rel == pytest.approx(off.max_abs / off.scale)
    assert not compare(np.full_like(torch32, np.nan), torch32, exact).passed
    overridden = compare(torch32 + np.float32(1e-3), torch32, exact, max_rel=1e-3)
    assert overridden.passed and overridden.bound_abs == pytest.approx(1e-3 * overridden.scale)
    assert not compare(torch32 + np.float32(2e-3 * overridden.scale), torch32, exact, max_rel=1e-3).passed
    without64 = compare(torch32 + np.float32(1e-3), torch32, None, max_rel=1e-3)  # no float64 pass needed
    assert without64.passed and without64.figures()["float32_error"] is None
    assert without64.scale == pytest.approx(overridden.scale, rel=UNIT_ROUNDOFF)
    with pytest.raises(ValueError, match="shape"):
        compare(torch32[:1], torch32, exact)


@pytest.mark.parametrize("existing", ["model.onnx", "model.onnx.json", "model.onnx.data"])
def test_an_existing_out_or_companion_is_refused_without_overwrite(tmp_path, existing):
    (tmp_path / existing).write_text("kept")
    code, stdout, stderr = run_export("--ckpt", str(tmp_path / "absent.ckpt"), "--out", str(tmp_path / "model.onnx"))
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == [f"error: --out {tmp_path / existing} exists: pass --overwrite to replace it"]
    assert [p.name for p in tmp_path.iterdir()] == [existing] and (tmp_path / existing).read_text() == "kept"


def test_a_format_the_out_name_contradicts_is_one_error_line(tmp_path):
    out = tmp_path / "m.pt"
    code, _, stderr = run_export("--ckpt", str(tmp_path / "a.ckpt"), "--out", str(out), "--format", "onnx")
    assert code == 2 and stderr.splitlines() == [f"error: --out {tmp_path / 'm.pt'} must end in one of .onnx"]


def test_a_missing_extra_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    code, _, stderr = run_export("--ckpt", str(tmp_path / "a.ckpt"), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and len(stderr.splitlines()) == 1
    assert stderr.startswith("error: --format onnx needs the optional packages")
    assert "pip install -e '.[onnx]'" in stderr
    assert list(tmp_path.iterdir()) == []
