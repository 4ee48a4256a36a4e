"""tools/ablate.py: mean ± sd over seeds, paired directions, the paper-layout table, recipes scaled to --steps, the
relative validation source, and the smoke mode end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml

from helpers.cli import child_env
from tests.helpers.paths import TOOLS

sys.path.insert(0, str(TOOLS))
import ablate  # noqa: E402
from ablate_report import (  # noqa: E402
    CHECKS, PAPER_COLUMNS, Summary, condition_markdown, condition_rows, conditions_json, markdown, paired, rows,
    summarise, verdict)


def test_summarise_gives_mean_and_sample_sd_of_the_finite_values():
    assert summarise([1.0, 2.0, 3.0]) == Summary(2.0, 1.0, 3)  # sd with n - 1: sqrt((1 + 0 + 1) / 2)
    half = summarise([1.0, math.nan, 4.0])  # a metric a run did not log is left out, not counted as 0
    assert (half.mean, half.n) == (2.5, 2) and half.sd == pytest.approx(math.sqrt(4.5), rel=1e-12)
    assert summarise([1.0, 2.0, 3.0]).text() == "2.0000 ± 1.0000"
    one = summarise([0.25])
    assert one.n == 1 and math.isnan(one.sd) and one.text() == "0.2500"
    assert summarise([math.nan]).text() == "n/a"


def test_verdict_needs_the_t_interval_to_exclude_zero():
    """n = 3: half-width 4.303 * sd / sqrt(3) = 2.484 sd."""
    assert verdict(Summary(1.0, 0.3, 3), +1) == "yes"
    assert verdict(Summary(1.0, 0.3, 3), -1) == "no (opposite)"
    assert verdict(Summary(1.0, 0.5, 3), +1) == "not resolved"  # 1.0 < 2.484 * 0.5
    assert verdict(Summary(1.0, 0.5, 3), 0) == "yes (no resolved change)"
    assert verdict(Summary(1.0, 0.3, 3), 0) == "no (changes)"
    assert verdict(Summary(1.0, math.nan, 1), +1) == "no verdict (one seed)"


def test_differences_are_paired_by_seed_and_a_constant_pairs_with_every_seed():
    results = {"1A": [{"synth_val/boundary_f1": 0.10}, {"synth_val/boundary_f1": 0.30}],
               "1C": [{"synth_val/boundary_f1": 0.11}, {"synth_val/boundary_f1": 0.31}],
               "FOV head": [{"synth_val/share_below_25": 0.5}, {"synth_val/share_below_25": 0.7}],
               "constant FOV": [{"synth_val/share_below_25": 0.25}]}
    ssi, fov = CHECKS[0], CHECKS[-1]
    assert paired(results, ssi) == pytest.approx([0.01, 0.01])  # seed-to-seed spread (0.2) cancels
    assert paired(results, fov) == pytest.approx([0.25, 0.45])
    table = rows(results)  # only the checks whose conditions ran
    assert [r.check for r in table] == [ssi, fov]
    assert table[0].verdict == "yes" and table[0].diff.sd == pytest.approx(0.0, abs=1e-12)


def test_3a_is_read_from_the_2a_runs():
    runs = [{"real_val/abs_rel": 0.5, "real_val/delta1": 0.4, "synth_val/abs_rel": 0.3, "synth_val/delta1": 0.6,
             "synth_val/boundary_f1": 0.1}]
    table = rows({"1C": runs, "2A": runs, "3C": runs})
    assert {r.check.variant for r in table if r.check.base == "3C"} == {"3A"}
    assert all(r.diff.mean == 0 for r in table)


def test_paper_layout_has_a_row_per_condition_and_the_columns_of_tab_11_to_13():
    """Made-up results: 1A over two seeds, 3C over one, 2A with no relative source (a run of an older invocation),
    1C not run; the FOV runs are no row."""
    full = {"synth_val/abs_rel": 0.5, "synth_val/delta1": 0.4, "synth_val/boundary_f1": 0.01,
            "rel_val/abs_rel_aligned": 0.2, "rel_val/delta1_aligned": 0.7, "real_val/abs_rel": 0.6,
            "real_val/delta1": 0.3}
    results = {"1A": [full, {k: v + 0.1 for k, v in full.items()}], "3C": [full],
               "2A": [{k: v for k, v in full.items() if not k.startswith("rel_val/")}],
               "FOV head": [{"synth_val/share_below_25": 0.5}], "constant FOV": [{"synth_val/share_below_25": 0.5}]}
    table = condition_rows(results)
    assert [r.condition for r in table] == ["1A", "2A", "3C"]  # the paper's order; only what ran
    assert [c.metric for c in PAPER_COLUMNS] == [
        "synth_val/abs_rel", "synth_val/delta1", "synth_val/boundary_f1",
        "rel_val/abs_rel_aligned", "rel_val/delta1_aligned", "real_val/abs_rel", "real_val/delta1"]
    assert [c.group for c in PAPER_COLUMNS] == ["synthetic"] * 3 + ["relative"] * 2 + ["real-like"] * 2

    lines = condition_markdown(table).splitlines()
    body = [line for line in lines if line.startswith("|")]
    assert body[0] == ("| condition | synthetic AbsRel | synthetic δ1 | synthetic F1 | relative AbsRel | "
                       "relative δ1 | real-like AbsRel | real-like δ1 | n |")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in body[2:]]
    assert cells[0] == ["1A", "0.5500 ± 0.0707", "0.4500 ± 0.0707", "0.0600 ± 0.0707", "0.2500 ± 0.0707",
                        "0.7500 ± 0.0707", "0.6500 ± 0.0707", "0.3500 ± 0.0707", "2"]
    assert cells[1] == ["2A (= 3A)", "0.5000", "0.4000", "0.0100", "n/a", "n/a", "0.6000", "0.3000", "1"]
    assert cells[2][0] == "3C" and cells[2][4] == "0.2000" and cells[2][-1] == "1"
    assert "HRWSI" in lines[0] and "Hypersim" in lines[0] and "Apolloscape" in lines[0]

    data = conditions_json(table)
    assert data[0]["relative"]["rel_val/abs_rel_aligned"] == {"mean": pytest.approx(0.25), "sd": pytest.approx(
        math.sqrt(0.005)), "n": 2}
    assert data[1]["relative"]["rel_val/delta1_aligned"] == {"mean": None, "sd": None, "n": 0}
    assert data[1]["real-like"]["real_val/delta1"] == {"mean": 0.3, "sd": None, "n": 1}
    json.dumps(data, allow_nan=False)  # plain data, no NaN


def test_no_direction_check_reads_the_relative_columns():
    """The project's audit does not have the paper's HRWSI numbers: the relative columns are reported only."""
    assert not [c for c in CHECKS if c.metric.startswith("rel_val/")]


def test_every_run_validates_the_real_like_scenes_as_relative_too(tmp_path):
    """rel_val reads real_val's scenes with `metric: false`; synth_val stays first (what `val/<metric>` monitors),
    in the run recipe and in base.yaml."""
    scenes = {name: tmp_path / f"{name}.index.json" for name in ablate.SCENE_SEEDS}
    path = ablate.run_recipe(tmp_path / "run", ablate.RECIPES / "1a.yaml", scenes, 0, 4, tmp_path / "start")
    sources = yaml.safe_load(path.read_text())["data"]["val_sources"]
    assert sources == [{"name": "synth_val", "urls": str(scenes["synth_val"])},
                       {"name": "real_val", "urls": str(scenes["real_val"])},
                       {"name": "rel_val", "urls": str(scenes["real_val"]), "metric": False}]
    base = yaml.safe_load((ablate.RECIPES / "base.yaml").read_text())["data"]["val_sources"]
    assert [s["name"] for s in base] == ["synth_val", "real_val", "rel_val"]
    assert base[2]["metric"] is False and base[2]["urls"] == base[1]["urls"] and "metric" not in base[0]


def test_validation_metrics_are_collected_from_every_row_of_metrics_csv(tmp_path):
    """The aligned keys are kept even when logged on a row of their own; training rows add nothing."""
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/abs_rel,val/synth_val/abs_rel,val/rel_val/abs_rel_aligned,"
                    "val/rel_val/delta1_aligned\n"
                    "0,9,0.5,,,,\n"
                    "0,3,,0.4,0.4,,\n"
                    "0,3,,,,0.2,0.8\n")
    assert ablate.validation_metrics(path) == {"abs_rel": 0.4, "synth_val/abs_rel": 0.4,
                                               "rel_val/abs_rel_aligned": 0.2, "rel_val/delta1_aligned": 0.8}


def test_curriculum_switch_moves_with_steps(tmp_path):
    """2a.yaml switches at 50 of base.yaml's 100 steps: at --steps 4 it switches at step 2, and the run's
    checkpoint replaces the recipe's."""
    callbacks = ablate.scaled_callbacks(ablate.RECIPES / "2a.yaml", tmp_path, 4)
    checkpoint, curriculum = callbacks
    assert checkpoint["init_args"]["dirpath"] == str(tmp_path / "checkpoints")
    assert [s["start_step"] for s in curriculum["init_args"]["stages"]] == [0, 2]
    assert len(ablate.scaled_callbacks(ablate.RECIPES / "1a.yaml", tmp_path, 4)) == 1


def test_each_seed_reaches_the_data_stream(tmp_path):
    """The seed must change the data order and augmentation (`data.seed`), not only `seed_everything`: from one
    start, runs differing only in `seed_everything` are identical."""
    scenes = {name: tmp_path / f"{name}.index.json" for name in ablate.SCENE_SEEDS}
    path = ablate.run_recipe(tmp_path / "run", ablate.RECIPES / "1a.yaml", scenes, 7, 4, tmp_path / "start")
    config = yaml.safe_load(path.read_text())
    assert config["data"]["seed"] == 7 and config["seed_everything"] == 7


def test_an_interrupted_invocation_keeps_the_seeds_whose_every_run_finished(tmp_path):
    """--from-runs: seed 0 finished every run, seed 1 only 1A; the table is over seed 0 alone."""
    entries = [{"condition": name, "seed": 0, "steps": 4, "metrics": {"synth_val/abs_rel": 0.1}}
               for name in (*ablate.DEPTH_CONDITIONS, "FOV")]
    entries.append({"condition": "1A", "seed": 1, "steps": 4, "metrics": {"synth_val/abs_rel": 0.9}})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    results = ablate.finished_runs(tmp_path)
    assert set(results) == {*ablate.DEPTH_CONDITIONS, "FOV head"}
    assert all(runs == [{"synth_val/abs_rel": 0.1}] for runs in results.values())


def test_a_missing_start_is_one_error_line(tmp_path, capsys):
    assert ablate.main(["--init", str(tmp_path / "none.safetensors"), "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --init") and "none.safetensors" in err[0]
    assert not list(tmp_path.iterdir())  # nothing rendered


@pytest.mark.slow
def test_smoke_mode_runs_every_condition_and_prints_the_table(tmp_path):
    """`--steps 4` end to end from a randomly initialised start of the recipes' network shape: every check's row,
    and the paper-layout table with a row per condition whose relative (aligned) columns are finite."""
    from dp_train.model.weights import save_weights
    from dp_train.train.module import build_network

    model = yaml.safe_load((ablate.RECIPES / "base.yaml").read_text())["model"]
    start = tmp_path / "start.safetensors"
    save_weights(build_network(model["preset"], model["network"]), start)
    command = [sys.executable, str(TOOLS / "ablate.py"), "--steps", "4", "--fov-steps", "2", "--train", "2",
               "--val", "2", "--seeds", "1", "--init", str(start), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = markdown([]).splitlines()
    start = lines.index(header[0])
    table = lines[start:start + 2 + len(CHECKS)]
    assert table[:2] == header and all(line.startswith("|") for line in table)
    for line, check in zip(table[2:], CHECKS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 8 and cells[0] == check.title and cells[1] == check.metric
        assert cells[2].startswith(f"{check.base}: ") and cells[3].startswith(f"{check.variant}: ")
        assert cells[5] == "1" and cells[7] == "no verdict (one seed)"
    layout_header = [line for line in condition_markdown([]).splitlines() if line.startswith("|")]
    start = lines.index(layout_header[0])
    layout = lines[start:start + 2 + len(ablate.DEPTH_CONDITIONS)]
    assert layout[:2] == layout_header
    relative = [i for i, c in enumerate(PAPER_COLUMNS) if c.group == "relative"]
    for line, name in zip(layout[2:], ablate.DEPTH_CONDITIONS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0].split()[0] == name and cells[-1] == "1"
        for i in relative:
            assert math.isfinite(float(cells[1 + i])), line  # one seed: the mean alone
