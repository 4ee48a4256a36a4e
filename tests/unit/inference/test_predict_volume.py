"""`predict` for volume: batches equal the one-at-a-time loop, `--compile` reaches the network, and clips (folders
of frames, videos) get per-frame depth, one focal length and a temporal-stability figure that tells a static scene
from a changing one. The shipped toy start is the network: its depth follows the image, unlike the test network's
near-constant output, so equal outputs and stability figures mean something."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dp_train.cli.main import main
from dp_train.evaluation.temporal import TemporalChange
from dp_train.inference.images import image_to_tensor, load_image
from dp_train.inference.predict import load_model
from dp_train.inference.predict import model as predict_model
from tests.helpers.paths import REPO
from tests.helpers.predict import random_image, summary_rows

WEIGHTS = REPO / "weights" / "toy_start.safetensors"
SIZES = ((96, 64), (130, 200), (50, 70))
"""(width, height) of the images batched together: all different, none the network's 512 x 512."""
RTOL = 1e-5
"""Batched vs one-at-a-time: the same float32 operations per image except the summation order inside the batched
convolutions and matrix products (a few hundred terms each, ~1e-7 relative rounding each, over a dozen layers):
well under 1e-5 relative, the agreement `predict` promises."""
FRAMES = 3
STATIC_NOISE = 2 / 255
"""Per-frame pixel noise of the static scene: a camera's sensor noise at 8 bits."""


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    """The toy start, as `predict` loads it."""
    return load_model(WEIGHTS, None)


def _predict(inputs: Path, output: Path, *extra: str) -> int:
    """`dp_train predict` with the toy start on CPU."""
    return main(["predict", "--weights", str(WEIGHTS), "--input", str(inputs), "--output", str(output),
                 "--device", "cpu", "--workers", "2", *extra])


def _reference(model: torch.nn.Module, path: Path, f_px: float | None = None) -> tuple[np.ndarray, float]:
    """The one-at-a-time loop's result for one image: `DepthPro.infer` on it alone."""
    image, _ = load_image(path)
    out = model.infer(image_to_tensor(image), f_px=f_px)
    return out["depth"].numpy(), float(out["focallength_px"])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three images of different sizes."""
    folder = tmp_path_factory.mktemp("batch") / "images"
    folder.mkdir()
    for seed, (width, height) in enumerate(SIZES):
        random_image(width, height, seed).save(folder / f"im{seed}.png")
    return folder


@pytest.fixture(scope="module")
def loop(network, images: Path) -> dict[str, tuple[np.ndarray, float]]:
    """The one-at-a-time loop's depth and estimated focal length of each image, by file name."""
    return {path.name: _reference(network, path) for path in sorted(images.iterdir())}


def _assert_like_the_loop(loop: dict[str, tuple[np.ndarray, float]], output: Path) -> None:
    """Every image written has the loop's depth and estimated focal length, within RTOL."""
    rows = summary_rows(output)
    assert rows
    for name, row in rows.items():
        depth, focal = loop[name]
        written = np.load(output / f"{Path(name).stem}.npy")
        assert written.shape == depth.shape
        np.testing.assert_allclose(written, depth, rtol=RTOL, err_msg=name)
        assert row["focal_px"] == pytest.approx(focal, rel=RTOL)


@pytest.mark.slow
def test_batches_equal_the_one_at_a_time_loop(loop, images: Path, tmp_path: Path) -> None:
    assert _predict(images, tmp_path / "out", "--batch-size", "2") == 0  # a full batch, then a short one
    assert len(summary_rows(tmp_path / "out")) == len(SIZES)
    _assert_like_the_loop(loop, tmp_path / "out")


def test_compile_reaches_the_network_and_a_padded_batch_changes_nothing(loop, images: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []

    def spy(model: torch.nn.Module, **options: object) -> torch.nn.Module:
        compiled.append((model, options))
        return model  # compiling the network takes minutes on a CPU: what is tested is that it is asked for

    monkeypatch.setattr(predict_model.torch, "compile", spy)
    assert _predict(images / "im0.png", tmp_path / "out", "--batch-size", "2", "--compile") == 0
    assert len(compiled) == 1 and type(compiled[0][0]).__name__ == "DepthPro"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["compile"] is True
    _assert_like_the_loop(loop, tmp_path / "out")  # its one image was padded to a batch of 2


def _scene(shift: int, rng: np.random.Generator) -> np.ndarray:
    """A 128 x 96 uint8 RGB scene: two gradients and a red box `shift` pixels right of its start, with noise."""
    y, x = np.mgrid[0:96, 0:128]
    image = np.stack([y / 96, 0.3 + 0.4 * x / 128, np.full_like(x, 0.5, dtype=float)], axis=-1)
    image[(abs(x - 30 - shift) < 18) & (abs(y - 50) < 25)] = (0.9, 0.2, 0.1)
    image += rng.normal(0.0, STATIC_NOISE, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """frames/static (a still scene, new noise each frame), frames/moving (a box moving 20 px a frame),
    frames/clip.avi (the still scene as an MJPG video) and frames/broken.mp4 (not a video)."""
    root = tmp_path_factory.mktemp("clips") / "frames"
    rng = np.random.default_rng(0)
    for name, step in (("static", 0), ("moving", 20)):
        (root / name).mkdir(parents=True)
        for k, number in enumerate((2, 10, 100)):  # by name frame_2 would be last, by number it is first
            Image.fromarray(_scene(k * step, rng)).save(root / name / f"frame_{number}.png")
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    if not writer.isOpened():
        pytest.skip("this OpenCV build writes no MJPG video")
    for _ in range(FRAMES):
        writer.write(_scene(0, rng)[..., ::-1])
    writer.release()
    (root / "broken.mp4").write_bytes(b"not a video \x00\x01" * 50)
    return root


@pytest.fixture(scope="module")
def clips_run(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    """One run over the frame folders and videos: exit code, output folder, stderr."""
    output = tmp_path_factory.mktemp("clips_out")
    with pytest.MonkeyPatch.context() as patch:
        lines: list[str] = []
        patch.setattr("dp_train.inference.predict.command.tqdm_warn", lines.append)
        code = _predict(clips, output, "--sequence", "--recursive", "--batch-size", "2")
    return code, output, "\n".join(lines)


@pytest.mark.slow
def test_a_clip_gets_depth_per_frame_and_its_first_frames_focal_length(clips_run, clips: Path, network) -> None:
    code, output, _ = clips_run
    assert code == 0
    row = summary_rows(output)["moving"]
    assert row["frames"] == FRAMES and row["error"] is None and row["focal_source"] == "estimated"
    frames = sorted((clips / "moving").iterdir(), key=lambda p: int(p.stem.split("_")[1]))
    depth, first_focal = _reference(network, frames[0])
    assert row["focal_px"] == pytest.approx(first_focal, rel=RTOL)
    np.testing.assert_allclose(np.load(output / "moving" / "000000.npy"), depth, rtol=RTOL)
    for k, path in enumerate(frames[1:], start=1):  # later frames converted with the first frame's focal length
        depth, _ = _reference(network, path, f_px=row["focal_px"])
        np.testing.assert_allclose(np.load(output / "moving" / f"{k:06d}.npy"), depth, rtol=RTOL)


@pytest.mark.slow
def test_temporal_change_is_small_for_a_still_scene_and_large_for_a_moving_one(clips_run) -> None:
    _, output, _ = clips_run
    rows = summary_rows(output)
    static, moving = rows["static"]["temporal_change"], rows["moving"]["temporal_change"]
    assert static < 0.02 and moving > 0.1  # measured: 0.006 and 0.16; a still camera's flicker, a box moving
    metric = TemporalChange()
    for k in range(FRAMES):  # the figure is the metric of the written depth maps
        metric.update(torch.from_numpy(np.load(output / "moving" / f"{k:06d}.npy"))[None],
                      torch.zeros(1), torch.tensor([k]))
    assert moving == pytest.approx(float(metric.compute()["temporal_change"]), rel=1e-6)


@pytest.mark.slow
def test_a_video_is_read_frame_by_frame_and_a_broken_one_skipped(clips_run) -> None:
    _, output, warnings = clips_run
    rows = summary_rows(output)
    assert rows["clip.avi"]["frames"] == FRAMES and rows["clip.avi"]["temporal_change"] < 0.02
    assert [np.load(output / "clip" / f"{k:06d}.npy").shape for k in range(FRAMES)] == [(96, 128)] * FRAMES
    assert rows["broken.mp4"]["error"].startswith("ValueError: cannot open it as a video")
    assert warnings.count("broken.mp4") == 1 and len(warnings.splitlines()) == 1


@pytest.mark.parametrize("case", ["unreadable video", "empty folder"])
def test_a_bad_clip_input_is_one_error_line(case: str, tmp_path: Path, capsys) -> None:
    if case == "unreadable video":
        culprit = tmp_path / "broken.mp4"
        culprit.write_bytes(b"\x00" * 1000)
    else:
        culprit = tmp_path / "empty"
        culprit.mkdir()
    assert _predict(culprit, tmp_path / "out", "--sequence") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(culprit) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
