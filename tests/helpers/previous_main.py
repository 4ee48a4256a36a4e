"""The committed checkpoint of an earlier main (tests/data/previous_main/): how it was made, and the recipe a
test resumes it with.

Made with `python -m tests.helpers.previous_main OUT` in a checkout of the commit named in
tests/data/previous_main/README.md: a 12-step tiny run (two sources, EMA, a curriculum switch at step 6 that
restarts the LR schedule, 2 workers) whose step-8 checkpoint and per-step record are kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.cli import child_env, dp_train_command

STEPS, SAVED_AT, SWITCH, EPOCH = 12, 8, 6, 4
"""Steps of the run, the step of the kept checkpoint, the curriculum switch, batches per epoch."""


def write_shards(root: Path) -> Path:
    """The run's train shards (deterministic: the same seed writes the same samples under the same names)."""
    from dp_train.synth import write_synthetic_shards

    return write_synthetic_shards(root, "train", 12, size=(64, 96), seed=3, samples_per_shard=6, progress=False)


def recipe(run: Path, shards: Path, curriculum_class: str) -> dict[str, Any]:
    """The run's recipe; `curriculum_class` is the class path of the curriculum callback in the code at hand."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": -1,
                       "every_n_train_steps": 4, "filename": "{step}"}},
        {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}},
        {"class_path": curriculum_class,
         "init_args": {"stages": [
             {"name": "one", "start_step": 0, "mixture": {"a": 1.0, "b": 1.0}, "loss": {"mae": 1.0}},
             {"name": "two", "start_step": SWITCH, "mixture": {"b": 1.0}, "loss": {"mae": 1.0, "mage": 1.0},
              "reset_lr": True},
         ]}},
        {"class_path": "tests.helpers.record.RecordSteps", "init_args": {"path": str(run / "steps.jsonl")}},
    ]
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": STEPS, "limit_val_batches": 0,
            "num_sanity_val_steps": 0, "logger": False, "enable_progress_bar": False,
            "default_root_dir": str(run), "callbacks": callbacks,
        },
        "model": {"preset": "tiny", "lr_encoder": 1e-3, "lr_decoder": 1e-3, "warmup_steps": 2,
                  "network": {"vit_img_size": 128, "embed_dim": 16, "depth": 2, "num_heads": 2,
                              "hook_blocks": [0, 1], "decoder_features": 8,
                              "encoder_feature_dims": [8, 8, 16, 16], "fov_head": False},
                  "log_images_every_n_val_steps": 0, "boundary_metrics": False},
        "data": {
            "train_sources": [{"name": "a", "urls": str(shards)}, {"name": "b", "urls": str(shards)}],
            "image_size": 512, "batch_size": 1, "samples_per_epoch": EPOCH, "num_workers": 2,
            "pin_memory": False, "shuffle_buffer": 4,
        },
    }


def make(out: Path, curriculum_class: str) -> None:
    """Run the recipe with the code at hand; keep its step-8 checkpoint and its per-step record in `out`."""
    run = out / "run"
    run.mkdir(parents=True)
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(run, write_shards(run / "shards"), curriculum_class)))
    subprocess.run(dp_train_command("fit", path), env=child_env(), check=True, cwd=run)
    shutil.copy(run / "ckpt" / f"step={SAVED_AT}.ckpt", out / f"step{SAVED_AT}.ckpt")
    shutil.copy(run / "steps.jsonl", out / "steps.jsonl")
    shutil.rmtree(run)


if __name__ == "__main__":
    make(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "dp_train.curriculum.CurriculumCallback")
