"""Distillation (`model.teacher`): the teacher stays frozen, outside the optimizer and the checkpoint; its term is
zero for a student that is its teacher, moves the student only, labels image-only samples; a bad teacher file is
one error line; a run with a teacher resumes exactly and exports the student's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dp_train.cli.main import main
from dp_train.convert.make_shards import main as make_shards
from dp_train.data.samples import use_problem
from dp_train.model import DepthProConfig, build_depth_pro, load_weights, save_weights
from dp_train.model.weights import save_state_dict
from dp_train.shards import Sample, SampleMeta
from dp_train.synth import write_synthetic_shards
from dp_train.train.distill import load_teacher, resized
from dp_train.train.module import DepthProModule, build_network
from tests.helpers.kill_and_resume import assert_same_states
from tests.helpers.paths import REPO

NETWORK = {"vit_img_size": 128, "decoder_features": 16, "encoder_feature_dims": [8, 16, 32, 32]}
STUDENT = NETWORK | {"embed_dim": 32, "depth": 2, "hook_blocks": [0, 1], "fov_head": False}
"""A student smaller than the teacher (the quick start's network), at the same 512 px input."""


def weights_file(path: Path, seed: int, network: dict = NETWORK) -> Path:
    """A `.safetensors` of a randomly initialised tiny network (seed `seed`), its shape in the header."""
    torch.manual_seed(seed)
    save_weights(build_network("tiny", network), path)
    return path


def batch(size: int = 1, with_depth: bool = False, seed: int = 0) -> dict:
    """A normalised batch at 512 px: image-only samples (every pixel invalid) or metric synthetic ones."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(size, 3, 512, 512, generator=generator) * 2 - 1
    flags = torch.full((size,), with_depth)
    return {"image": image, "target": torch.rand(size, 1, 512, 512, generator=generator) * with_depth,
            "valid": torch.full((size, 1, 512, 512), with_depth), "metric": flags, "synthetic": flags,
            "sparse": torch.zeros(size, dtype=torch.bool), "f_px": torch.zeros(size)}


def test_the_teacher_is_frozen_outside_the_optimizer_and_moves_only_the_student(tmp_path):
    teacher = weights_file(tmp_path / "teacher.safetensors", seed=1)
    module = DepthProModule(preset="tiny", network=STUDENT, teacher=str(teacher), lr_encoder=1e-2, lr_decoder=1e-2,
                            warmup_steps=0)
    frozen = dict(module.teacher.net.named_parameters())
    before = {name: p.detach().clone() for name, p in frozen.items()}
    assert not any(p.requires_grad for p in frozen.values()) and not module.teacher.net.training
    assert {id(p) for p in frozen.values()}.isdisjoint(id(p) for p in module.parameters())
    assert sorted(module.state_dict()) == sorted(DepthProModule(preset="tiny", network=STUDENT).state_dict())
    optimizer = module.configure_optimizers()["optimizer"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized.isdisjoint(id(p) for p in frozen.values())
    student = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    module.train()
    for step in range(2):  # image-only batches: the teacher's term is the whole loss
        optimizer.zero_grad()
        terms, per_image = module.objective(batch(seed=step))
        assert torch.isfinite(terms["loss"]) and terms["loss"] == terms["teacher"] > 0
        assert terms["mae"] == 0 and torch.allclose(per_image.mean(), terms["loss"])
        terms["loss"].backward()
        assert all(p.grad is None for p in frozen.values())
        assert all(torch.isfinite(p.grad).all() for p in module.net.parameters() if p.grad is not None)
        optimizer.step()
    assert all(torch.equal(before[name], p) for name, p in frozen.items())
    assert not module.teacher.net.training
    assert any(not torch.equal(student[name], p) for name, p in module.net.named_parameters())


def test_a_student_that_is_its_teacher_gets_a_zero_term_and_keeps_its_own_objective(tmp_path):
    same = weights_file(tmp_path / "same.safetensors", seed=2)
    module = DepthProModule(preset="tiny", network=NETWORK, init_from=str(same), teacher=str(same))
    alone = DepthProModule(preset="tiny", network=NETWORK, init_from=str(same))
    module.train(), alone.train()
    terms, _ = module.objective(batch(with_depth=True))
    own, _ = alone.objective(batch(with_depth=True))
    assert terms["teacher"] == 0 and terms["loss"] == own["loss"] > 0


def test_in_fov_mode_the_teacher_term_matches_the_fov_and_moves_the_fov_head_only(tmp_path):
    """A sample without a focal length: the teacher's FOV is its only target (L2 on the angle, `fov_loss`)."""
    start = weights_file(tmp_path / "start.safetensors", seed=6)
    other = weights_file(tmp_path / "other.safetensors", seed=7)
    module = DepthProModule(preset="tiny", network=NETWORK, init_from=str(start), mode="fov", teacher=str(other))
    module.train()
    terms, _ = module.objective(batch())
    with torch.no_grad():
        _, student_fov = module.net(batch()["image"])
    _, teacher_fov = module.teacher.targets(batch()["image"])
    assert terms["teacher"].item() == pytest.approx(torch.deg2rad(student_fov - teacher_fov).square().item(), rel=1e-4)
    terms["loss"].backward()
    moved = {name for name, p in module.net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and all(name.startswith("fov.") for name in moved)


def test_teacher_far_drops_the_teachers_far_labels_from_its_term(tmp_path, monkeypatch):
    """With `teacher_far`, pixels the teacher places beyond that canonical depth carry no teacher term: the term
    is the one of the near pixels alone, whatever the teacher says beyond; an image all far gives a zero term."""
    module = DepthProModule(preset="tiny", network=STUDENT, teacher=str(weights_file(tmp_path / "t.safetensors", 4)),
                            teacher_far=10.0)
    near = torch.full((1, 1, 512, 512), 0.5)  # canonical depth 2 m
    student = torch.full_like(near, 0.4)  # off the near labels: their term is > 0
    labels = {"half far": near.clone(), "far sky": near.clone(), "all far": torch.full_like(near, 0.01)}
    labels["half far"][..., :256] = 0.05  # 20 m: beyond 10
    labels["far sky"][..., :256] = 0.001  # 1000 m
    terms = {}
    for name, label in labels.items():
        monkeypatch.setattr(module.teacher, "targets", lambda image, label=label: (label, None))
        terms[name], _ = module.teacher.add_term({"loss": torch.tensor(0.0)}, torch.zeros(1), batch()["image"],
                                                 student, None)
    assert terms["half far"]["teacher"] == terms["far sky"]["teacher"] > 0  # the left half differs: ignored
    assert terms["all far"]["teacher"] == 0
    with pytest.raises(ValueError, match=r"model.teacher_far=0.0: must be > 0"):
        DepthProModule(preset="tiny", network=STUDENT, teacher=str(tmp_path / "t.safetensors"), teacher_far=0.0)


def test_images_are_resized_for_a_teacher_of_another_size_without_changing_the_values():
    """Canonical inverse depth f / (W D) does not change with a square image's size: a map is resized, never
    rescaled (a constant map stays the same constant both ways)."""
    constant = torch.full((1, 1, 512, 512), 0.3)
    assert torch.allclose(resized(resized(constant, 1024), 512), constant)
    ramp = torch.linspace(0, 1, 512).expand(1, 1, 512, 512)
    assert resized(ramp, 256).shape[-1] == 256 and resized(ramp, 512) is ramp


def test_with_a_teacher_training_takes_samples_without_depth_or_focal_length(tmp_path):
    photo = Sample("p", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32), np.zeros((4, 4), bool),
                   SampleMeta("p", None, False, False, False, "none"))
    assert use_problem(photo, "depth") and use_problem(photo, "fov") and use_problem(photo, "distill") is None
    module = DepthProModule(preset="tiny", network=NETWORK, teacher=str(weights_file(tmp_path / "t.safetensors", 3)))
    assert module.training_use == "distill" and DepthProModule(preset="tiny", network=NETWORK).training_use == "depth"


@pytest.mark.parametrize("case", ["missing", "text", "not_depth_pro", "no_fov_head"])
def test_a_bad_teacher_is_one_error_line_naming_model_teacher(tmp_path, capsys, case):
    path = {"missing": tmp_path / "nowhere.safetensors", "text": tmp_path / "notes.pt",
            "not_depth_pro": tmp_path / "other.safetensors", "no_fov_head": tmp_path / "depth_only.safetensors"}[case]
    if case == "text":
        path.write_text("not weights\n")
    elif case == "not_depth_pro":
        save_state_dict({"layer.weight": torch.zeros(3, 3)}, path)
    elif case == "no_fov_head":
        weights_file(path, 0, NETWORK | {"fov_head": False})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "trainer": {"logger": False}, "model": {"preset": "tiny", "network": NETWORK, "teacher": str(path),
                                                "mode": "fov" if case == "no_fov_head" else "depth"},
        "data": {"image_size": 512, "train_sources": [{"name": "s", "urls": "s-000.tar"}], "num_workers": 0}}))
    assert main(["fit", "--recipe", str(recipe)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert len(errors) == 1 and errors[0].startswith("error: model.teacher: ") and str(path) in errors[0], errors


@pytest.mark.parametrize("recipe", ["distill.yaml", "distill_toy.yaml"])
def test_the_distillation_recipes_are_complete_jobs_with_a_smaller_student(capsys, recipe):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--recipe", str(REPO / "recipes" / recipe), "--print_config"])
    assert exit_.value.code in (0, None)
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    student = DepthProConfig.preset(model["preset"], **model["network"])
    if recipe == "distill.yaml":  # Apple's file records no shape: it is depth_pro_l
        assert model["teacher"] == "weights/depth_pro.pt" and student.embed_dim < DepthProConfig().embed_dim
    else:
        teacher = load_teacher(REPO / model["teacher"], "depth")
        size = sum(p.numel() for p in build_depth_pro(student).parameters())
        assert size < sum(p.numel() for p in teacher.parameters()) / 5 and teacher.img_size == student.img_size


def image_only_shards(root: Path) -> Path:
    """Photos as an image-only set (`make_shards --images DIR --image-only`: no depth, no focal length)."""
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"photo{index}.png")
    assert make_shards(["--images", str(folder), "--image-only", "--dataset", "images", "--out", str(root / "io"),
                        "--workers", "1"]) == 0
    return root / "io" / "images.index.json"


@pytest.mark.slow
def test_a_run_with_a_teacher_resumes_exactly_and_saves_and_exports_the_student_only(tmp_path):
    teacher = weights_file(tmp_path / "teacher.safetensors", seed=5)
    sources = [{"name": "images", "urls": str(image_only_shards(tmp_path))},
               {"name": "depth", "urls": str(write_synthetic_shards(tmp_path / "gt", "gt", 4, size=(64, 64), seed=12,
                                                                    progress=False))}]

    def fit(run: str, steps: int, *extra: str) -> dict:
        recipe = tmp_path / f"{run}.yaml"
        recipe.write_text(yaml.safe_dump({
            "seed_everything": 0,
            "trainer": {"accelerator": "cpu", "max_steps": steps, "limit_val_batches": 0, "logger": False,
                        "enable_progress_bar": False, "default_root_dir": str(tmp_path / run),
                        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"dirpath": str(tmp_path / run), "save_last": True,
                                                     "save_top_k": 0, "every_n_train_steps": 2}}]},
            "model": {"preset": "tiny", "network": STUDENT, "teacher": str(teacher), "lr_encoder": 1e-3,
                      "lr_decoder": 1e-3, "warmup_steps": 0, "min_lr_ratio": 1.0, "boundary_metrics": False},
            "data": {"train_sources": sources, "image_size": 512, "batch_size": 2, "samples_per_epoch": 8,
                     "num_workers": 0, "pin_memory": False, "augment": {"crop": "random_square"}}}))
        assert main(["fit", "--recipe", str(recipe), *extra]) == 0
        return torch.load(tmp_path / run / "last.ckpt", map_location="cpu", weights_only=True)

    whole = fit("whole", 4)
    fit("cut", 2)
    resumed = fit("cut", 4, "--ckpt_path", str(tmp_path / "cut" / "last.ckpt"))
    # the cut run's schedule records 2 steps in all, not 4; at a constant LR that changes nothing else
    keys = ("state_dict", "optimizer_states", "DepthDataModule", "global_step")
    assert_same_states({k: resumed[k] for k in keys}, {k: whole[k] for k in keys}, "resumed at step 2")
    student = DepthProModule(preset="tiny", network=STUDENT).state_dict()
    assert sorted(whole["state_dict"]) == sorted(student)  # the teacher is not in the checkpoint
    assert main(["export", "--ckpt", str(tmp_path / "whole" / "last.ckpt"), "--out", str(tmp_path / "s.pt")]) == 0
    load_weights(build_network("tiny", STUDENT), tmp_path / "s.pt", strict=True)
