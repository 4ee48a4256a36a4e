"""The guard: sets the run never trains on (`data.guard_sources`) are validated with the in-domain ones;
`GuardedSelection` compares every validation with the starting weights' (validated once before training), logs the
in-domain gain and each guard set's change, and keeps the best in-domain checkpoint whose guard sets stay within
tolerance; bad guard settings are one error line."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from dp_train.cli.main import main
from dp_train.evaluation.guard import GuardedSelection, relative_worsening
from dp_train.synth import write_synthetic_shards


class FakeTrainer(SimpleNamespace):
    """What the callback reads of a trainer: metrics, state, sources; records saves and logged metrics."""

    def __init__(self, tmp_path: Path) -> None:
        datamodule = SimpleNamespace(source_names=lambda split: {"val": ["home", "nyu", "kitti"],
                                                                 "guard": ["nyu", "kitti"]}[split])
        super().__init__(sanity_checking=False, state=SimpleNamespace(fn="validate"), datamodule=datamodule,
                         is_global_zero=True, global_step=0, checkpoint_callback=None,
                         default_root_dir=str(tmp_path), callback_metrics={}, saved=[], logged=[])
        self.logger = SimpleNamespace(log_metrics=lambda metrics, step: self.logged.append((step, metrics)))

    def save_checkpoint(self, path: Path) -> None:
        self.saved.append((self.global_step, path))

    def validated(self, callback: GuardedSelection, step: int, **values: float) -> None:
        """One validation at `step` with these per-source values of the callback's metric (the first: the start)."""
        self.global_step = step
        self.callback_metrics = {f"val/{name}/{callback.metric}": torch.tensor(v) for name, v in values.items()}
        callback.on_validation_end(self, None)
        self.state.fn = "fit"


def test_relative_worsening_follows_the_metric_direction():
    assert relative_worsening(0.2, 0.21, "min") == pytest.approx(0.05)
    assert relative_worsening(0.8, 0.76, "max") == pytest.approx(0.05)
    assert relative_worsening(0.8, 0.88, "max") == pytest.approx(-0.1)
    assert math.isnan(relative_worsening(0.0, 0.1, "min"))


def test_the_best_in_domain_checkpoint_within_guard_tolerance_is_kept(tmp_path):
    trainer, guard = FakeTrainer(tmp_path), GuardedSelection(tolerance=0.05)
    trainer.validated(guard, 0, home=0.40, nyu=0.10, kitti=0.20)  # the start
    trainer.validated(guard, 100, home=0.30, nyu=0.104, kitti=0.20)  # better, guards within 5 %: kept
    trainer.validated(guard, 200, home=0.20, nyu=0.12, kitti=0.20)  # better still, but nyu 20 % worse: not kept
    trainer.validated(guard, 300, home=0.35, nyu=0.10, kitti=0.19)  # within, but not better than step 100
    trainer.validated(guard, 400, home=0.25, nyu=0.10, kitti=0.21)  # within (kitti +5 % exactly) and better
    path = tmp_path / "checkpoints" / "guarded-best.ckpt"
    assert trainer.saved == [(100, path), (400, path)]
    steps = [step for step, _ in trainer.logged]
    assert steps == [100, 200, 300, 400]  # nothing logged for the start itself
    step200 = trainer.logged[1][1]
    assert step200["guard/in_domain_gain"] == pytest.approx(0.5)
    assert step200["guard/nyu/change"] == pytest.approx(0.2) and step200["guard/kitti/change"] == pytest.approx(0)
    assert guard.best == pytest.approx(0.25) and guard.best_step == 400


def test_the_start_and_the_best_survive_a_resume(tmp_path):
    trainer, guard = FakeTrainer(tmp_path), GuardedSelection(metric="delta1", tolerance=0.0)
    trainer.validated(guard, 0, home=0.5, nyu=0.9, kitti=0.8)
    trainer.validated(guard, 10, home=0.6, nyu=0.9, kitti=0.8)
    resumed = GuardedSelection(metric="delta1", tolerance=0.0)
    resumed.load_state_dict(guard.state_dict())
    trainer.validated(resumed, 20, home=0.55, nyu=0.95, kitti=0.8)  # δ1: higher is better; 0.55 < best 0.6
    trainer.validated(resumed, 30, home=0.7, nyu=0.9, kitti=0.79)  # kitti worse than its start: not kept
    assert [step for step, _ in trainer.saved] == [10]
    assert trainer.logged[-1][1]["guard/in_domain_gain"] == pytest.approx(0.4)


@pytest.mark.parametrize(("init_args", "culprit"), [({"metric": "absrel"}, "metric='absrel'"),
                                                    ({"tolerance": -0.1}, "tolerance=-0.1")])
def test_bad_callback_settings_are_refused_naming_them(init_args, culprit):
    with pytest.raises(ValueError, match=culprit):
        GuardedSelection(**init_args)


# ---------------------------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """Train, in-domain validation and guard shard sets (different synthetic scenes)."""
    root = tmp_path_factory.mktemp("guard_shards")
    return {name: str(write_synthetic_shards(root / name, name, count, size=(48, 64), seed=seed, progress=False))
            for name, count, seed in (("train", 8, 3), ("home", 2, 4), ("zero_shot", 2, 5))}


def recipe(tmp_path: Path, shards: dict[str, str], guard: list[dict] | None = None, callbacks: tuple = ()) -> Path:
    """A 4-step tiny fit validating every 2 steps, with the guard sets `guard` and extra `callbacks`."""
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 4, "val_check_interval": 2,
                    "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path), "enable_checkpointing": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "logs", "version": 0}},
                    "callbacks": list(callbacks)},
        "model": {"preset": "tiny", "network": {"vit_img_size": 128, "decoder_features": 16,
                                                "encoder_feature_dims": [8, 16, 32, 32]},
                  "lr_encoder": 1e-3, "lr_decoder": 1e-3, "warmup_steps": 0, "boundary_metrics": False,
                  "log_images_every_n_val_steps": 0},
        "data": {"train_sources": [{"name": "train", "urls": shards["train"]}],
                 "val_sources": [{"name": "home", "urls": shards["home"]}],
                 "guard_sources": guard if guard is not None else [{"name": "zero_shot", "urls": shards["zero_shot"]}],
                 "image_size": 512, "batch_size": 2, "samples_per_epoch": 16, "num_workers": 0,
                 "pin_memory": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


GUARD = {"class_path": "dp_train.evaluation.guard.GuardedSelection", "init_args": {"tolerance": 1.0e6}}


def test_a_guarded_fit_validates_the_start_logs_the_guard_and_keeps_a_checkpoint(tmp_path, shards):
    assert main(["fit", "--recipe", str(recipe(tmp_path, shards, callbacks=(GUARD,)))]) == 0
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    gains = [(r["step"], r["guard/in_domain_gain"]) for r in rows if r.get("guard/in_domain_gain")]
    assert [step for step, _ in gains] == ["2", "4"] and all(math.isfinite(float(g)) for _, g in gains)
    assert sum(1 for r in rows if r.get("guard/zero_shot/change")) == 2
    validations = [r for r in rows if r.get("val/zero_shot/abs_rel")]
    assert len(validations) == 3  # the start (before training), then steps 2 and 4
    kept = torch.load(tmp_path / "checkpoints" / "guarded-best.ckpt", map_location="cpu", weights_only=True)
    state = next(v for k, v in kept["callbacks"].items() if k.startswith("GuardedSelection"))
    assert state["start"] == pytest.approx({"home": float(validations[0]["val/home/abs_rel"]),
                                            "zero_shot": float(validations[0]["val/zero_shot/abs_rel"])})
    assert state["best_step"] == kept["global_step"]


@pytest.mark.parametrize(("guard", "callbacks", "message"), [
    ("train", (), "data.guard_sources: 'zero_shot' reads shards that data.train_sources trains on"),
    ("home", (), "data.guard_sources: more than one source is named 'home'"),
    ("none", (GUARD,), "trainer.callbacks: GuardedSelection needs data.val_sources (in-domain) and data.guard_sources"),
])
def test_bad_guard_settings_are_one_error_line_before_any_work(tmp_path, shards, capsys, guard, callbacks, message):
    sources = {"train": [{"name": "zero_shot", "urls": shards["train"]}],
               "home": [{"name": "home", "urls": shards["zero_shot"]}], "none": []}[guard]
    assert main(["fit", "--recipe", str(recipe(tmp_path, shards, sources, callbacks))]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "Traceback"))]
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}")
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------------------------------------- the report


def summary_rows(abs_rel: dict[str, float], delta1: dict[str, float]) -> list[dict]:
    """One per-image row per dataset with these AbsRel and δ1 values (every other column NaN)."""
    from dp_train.evaluation.report_files import IMAGE_COLUMNS

    return [dict.fromkeys(IMAGE_COLUMNS, math.nan) | {"dataset": name, "key": "0", "empty": 0,
                                                       "abs_rel": abs_rel[name], "delta1": delta1[name]}
            for name in abs_rel]


def test_the_report_puts_the_start_beside_the_checkpoint_and_flags_drops(tmp_path):
    from dp_train.evaluation.report import EvaluationReport
    from dp_train.evaluation.report_compare import write_against_start
    from dp_train.evaluation.report_files import write_report

    write_report(tmp_path, summary_rows({"home": 0.4, "nyu": 0.1}, {"home": 0.5, "nyu": 0.9}), ["home", "nyu"], {}, [])
    report = EvaluationReport(out_dir=str(tmp_path), baseline=str(tmp_path))  # read before it is overwritten
    write_report(tmp_path, summary_rows({"home": 0.2, "nyu": 0.11}, {"home": 0.7, "nyu": 0.9}), ["home", "nyu"], {}, [])
    write_against_start(tmp_path, report.baseline, report.drop_tolerance)
    with open(tmp_path / "against_start.csv") as f:
        rows = {(r["dataset"], r["metric"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(d, m) for d in ("home", "nyu") for m in ("abs_rel", "delta1")}  # NaN columns left out
    assert float(rows["home", "abs_rel"]["change"]) == pytest.approx(-0.5)
    assert float(rows["home", "delta1"]["change"]) == pytest.approx(-0.4)
    assert float(rows["nyu", "abs_rel"]["change"]) == pytest.approx(0.1)
    assert [key for key, r in rows.items() if r["drop"] == "True"] == [("nyu", "abs_rel")]
    text = (tmp_path / "report.md").read_text()
    assert "## Against the start" in text and "| nyu | abs_rel | 0.1 | 0.11 | +10.0 % | **DROP** |" in text


def test_a_baseline_without_a_report_is_refused_naming_it(tmp_path):
    from dp_train.evaluation.report import EvaluationReport

    with pytest.raises(ValueError, match=f"baseline report {tmp_path}: no per_dataset.csv"):
        EvaluationReport(baseline=str(tmp_path))
