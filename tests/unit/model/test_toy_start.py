"""The shipped toy start (weights/toy_start.safetensors): Apple's layout, the quick start's network, a network
that already resolves scene structure on held-out scenes, and the tool that makes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dp_train.shards import decode_sample, shard_urls
from dp_train.data.health import SourceHealth
from dp_train.data.sources import raw_records
from dp_train.inference.images import image_to_tensor
from dp_train.evaluation.depth_accuracy import depth_metrics
from dp_train.model import build_depth_pro, load_weights
from dp_train.inference.predict import load_model
from tests.helpers.paths import REPO, TOOLS
from tests.helpers.quickstart import quickstart_config

sys.path.insert(0, str(TOOLS))
import make_toy_start  # noqa: E402  (a script in tools/, imported for its functions)

START = REPO / "weights" / "toy_start.safetensors"
HELD_OUT = REPO / "shards" / "sample" / "val" / "synth-val.index.json"
HELD_OUT_SCENES = 16


def quickstart_network() -> torch.nn.Module:
    """The network recipes/quickstart.yaml trains."""
    return build_depth_pro(quickstart_config())


def test_start_has_apples_tensor_names(fixtures_dir):
    """Exactly the tensor names Apple's code gives a network of this depth (its 4-block tiny network, saved by
    the reference implementation), each also a name of the released depth_pro.pt: Apple's code loads it."""
    apple_tiny = torch.load(fixtures_dir / "tiny_depth_pro_state_dict.pt", weights_only=True)
    released = json.loads((fixtures_dir / "apple_depth_pro_state_dict_manifest.json").read_text())["tensors"]
    with safe_open(START, "pt") as f:
        names = set(f.keys())
    assert names == set(apple_tiny)
    assert names <= set(released)


def test_start_loads_strictly_into_the_quickstart_network():
    """The quick start's `model.init_from` needs an exact fit (strict: no missing, unexpected or reshaped key)."""
    net = quickstart_network()
    load_weights(net, START, strict=True)
    state = net.state_dict()
    with safe_open(START, "pt") as f:
        assert all(torch.equal(state[name], f.get_tensor(name)) for name in f.keys())


def fov_vit_copies_image_encoder(path: Path) -> bool:
    """Whether every tensor of the FOV ViT in `path` equals the image encoder's of the same name."""
    with safe_open(path, "pt") as f:
        image = [n for n in f.keys() if n.startswith("encoder.image_encoder.")]
        return bool(image) and all(
            torch.equal(f.get_tensor(n), f.get_tensor("fov.encoder.0." + n.removeprefix("encoder.image_encoder.")))
            for n in image)


def test_start_fov_vit_starts_from_the_image_encoder():
    """The FOV stage starts, as a real run's does from DINOv2, from pretrained ViT features: the start's FOV ViT
    is its trained image encoder (the depth stages never train the FOV network)."""
    assert fov_vit_copies_image_encoder(START)


def held_out_scenes() -> list:
    """The first held-out scenes of the quick start's validation shards (seeds 100,000 and up)."""
    health = SourceHealth("held_out", max_bad_fraction=0.0, min_records=0)
    records = raw_records(shard_urls(str(HELD_OUT)), 1, 0, health)
    return [decode_sample(raw) for raw, _ in zip(records, range(HELD_OUT_SCENES))]


def held_out_errors(model: torch.nn.Module) -> dict[str, float]:
    """AbsRel and delta1 of `model`'s metric depth (given the true focal length) over the held-out scenes."""
    errors = []
    for sample in held_out_scenes():
        with torch.inference_mode():
            depth = model.infer(image_to_tensor(sample.image / 255.0), f_px=sample.meta.f_px)["depth"]
        gt = torch.from_numpy(np.where(sample.valid, sample.depth, 0.0))
        errors.append(depth_metrics(depth[None].float(), gt[None]))
    return {name: float(torch.cat([e[name] for e in errors]).mean()) for name in ("abs_rel", "delta1")}


def test_start_resolves_held_out_scenes():
    """Loaded as `predict` loads it (shape from the file's header), the start predicts metric depth on scenes
    it never saw far better than the untrained network of the same shape (what real runs get from DINOv2)."""
    start = held_out_errors(load_model(START, preset=None))
    torch.manual_seed(0)
    untrained = held_out_errors(quickstart_network().eval())
    assert start["abs_rel"] < 0.7 * untrained["abs_rel"]
    assert start["delta1"] > untrained["delta1"] + 0.3


@pytest.mark.parametrize("count,jobs", [(3000, 1), (3000, 14), (10, 3), (5, 5)])
def test_parallel_rendering_splits_the_seed_range_exactly(tmp_path, count, jobs):
    """Rendering with several processes covers the same scenes as one: consecutive seed ranges, each once, none
    empty, each with its own index (one process keeps the single index the shipped start was made with)."""
    parts = make_toy_start.chunks(tmp_path, "toy-train", count, 1_000_000, jobs)
    seeds = [seed for _, part_count, first in parts for seed in range(first, first + part_count)]
    assert seeds == list(range(1_000_000, 1_000_000 + count))
    assert all(part_count > 0 for _, part_count, _ in parts)
    assert len({index for index, _, _ in parts}) == jobs
    if jobs == 1:
        assert parts[0][0] == tmp_path / "toy-train.index.json"


def test_scenes_rendered_with_other_counts_are_refused_not_reused(tmp_path):
    """Scenes already in --scenes are reused only if each index holds its range's count: a run asked for other
    counts stops with one line naming the index, and the scenes there stay as they were."""
    [index] = make_toy_start.render(tmp_path, "toy-val", 2, 200_000, 32)
    before = index.read_bytes()
    assert make_toy_start.render(tmp_path, "toy-val", 2, 200_000, 32) == [index]
    with pytest.raises(SystemExit) as stop:
        make_toy_start.render(tmp_path, "toy-val", 3, 200_000, 32)
    assert str(stop.value).startswith(f"error: {index} holds 2 scenes, not 3")
    assert index.read_bytes() == before


def test_fit_overrides_follow_the_tools_own():
    """Arguments after `--` reach `dp_train fit` after the tool's run-directory overrides, so they win."""
    args = make_toy_start.parse_args(["--jobs", "2", "--", "--trainer.accelerator=gpu", "--data.batch_size=32"])
    assert args.jobs == 2 and args.fit_overrides == ["--trainer.accelerator=gpu", "--data.batch_size=32"]


@pytest.mark.parametrize("jobs", ["0", "5"])
def test_jobs_out_of_range_is_one_error_line(tmp_path, capsys, jobs):
    """--jobs outside 1..--train-scenes stops before anything is rendered, with one line naming the option."""
    code = make_toy_start.main(["--jobs", jobs, "--train-scenes", "4", "--run-dir", str(tmp_path / "run"),
                                "--out", str(tmp_path / "start.safetensors")])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --jobs must be 1..4 (--train-scenes), got {jobs}"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_make_toy_start_renders_trains_exports_and_never_overwrites(tmp_path):
    """The tool runs end to end at a smoke budget into its own folder (two rendering processes, a recipe
    override after `--`), writes a strictly loadable file whose FOV ViT starts from the image encoder, and
    refuses to replace it."""
    out = tmp_path / "start.safetensors"
    cmd = [sys.executable, str(REPO / "tools" / "make_toy_start.py"), "--run-dir", str(tmp_path / "run"),
           "--steps", "2", "--train-scenes", "4", "--val-scenes", "2", "--size", "64", "--jobs", "2",
           "--out", str(out), "--", "--data.num_workers=0"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "run" / "scenes" / "train").glob("*.index.json"))) == 2
    load_weights(quickstart_network(), out, strict=True)
    assert fov_vit_copies_image_encoder(out)
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"error: {out} exists (pass --overwrite to replace it)"]
