"""The paper's Tab. 1-4 filled from a per-dataset summary: which datasets join, values, average ranks."""

from __future__ import annotations

import math

import pytest

from dp_train.evaluation.paper_tables import PAPER_METHOD, TABLES, dataset_key, paper_tables

NAN = math.nan


def summary_row(dataset: str, **values: float) -> dict:
    """A per-dataset summary row; columns not given are NaN."""
    return {"dataset": dataset} | values


def tables_by_name(summary: list[dict]) -> dict[str, tuple[list[str], list[dict]]]:
    return {table.name: (header, rows) for table, header, rows in paper_tables(summary)}


def test_source_names_match_the_papers_dataset_names():
    assert [dataset_key(n) for n in ("Sun_RGBD", "P3M-10k", "eth3d", "dis 5k")] == ["sunrgbd", "p3m10k", "eth3d",
                                                                                   "dis5k"]


def test_tab1_has_delta1_in_percent_the_paper_column_and_average_ranks_by_hand():
    summary = [summary_row("sintel", delta1=0.5, delta1_fpred=0.3), summary_row("sun_rgbd", delta1=0.95),
               summary_row("my_own_set", delta1=0.1)]
    header, rows = tables_by_name(summary)["tab1_delta1"]
    assert header == ["method", "sintel", "sunrgbd", "avg. rank"]  # other sources are not the paper's
    by_method = {row["method"]: row for row in rows}
    assert by_method[PAPER_METHOD]["sintel"] == 40.0 and by_method[PAPER_METHOD]["sunrgbd"] == 89.0
    assert by_method["this checkpoint, true f"]["sintel"] == pytest.approx(50.0)
    assert math.isnan(by_method["this checkpoint, predicted f"]["sunrgbd"])
    # Ranked only where every method has a value (Sintel): 50 > 40 > 30.
    assert [row["avg. rank"] for row in rows] == [1.0, 3.0, 2.0]


def test_average_rank_over_datasets_with_ties_sharing_the_mean_rank():
    summary = [summary_row("booster", delta1=0.466), summary_row("eth3d", delta1=0.2)]
    _, rows = tables_by_name(summary)["tab1_delta1"]
    assert [row["method"] for row in rows] == ["this checkpoint, true f", PAPER_METHOD]  # no FOV head: no row
    assert [row["avg. rank"] for row in rows] == [pytest.approx(1.75), pytest.approx(1.25)]  # (1.5+2)/2, (1.5+1)/2


def test_boundary_focal_and_other_metric_tables():
    summary = [summary_row("ibims", boundary_f1=0.2), summary_row("dis5k", boundary_recall=0.05),
               summary_row("zoom", focal_share_below_25=0.5, focal_share_below_50=0.75),
               summary_row("middlebury", abs_rel=0.3, log10=0.1, delta2=0.9, delta3=0.95, silog=9.0)]
    tables = tables_by_name(summary)
    header, rows = tables["tab2_boundaries"]
    assert header == ["method", "ibims F1", "dis5k R"]
    assert rows == [{"method": "this checkpoint", "ibims F1": 0.2, "dis5k R": 0.05},
                    {"method": PAPER_METHOD, "ibims F1": 0.176, "dis5k R": 0.077}]
    header, rows = tables["tab3_focal"]
    assert rows[0]["zoom δ25"] == pytest.approx(50.0) and rows[1]["zoom δ50"] == 91.6
    header, rows = tables["tab4_depth"]
    ours = rows[0]
    assert ours["middlebury δ2 (%)"] == pytest.approx(90.0) and ours["middlebury SI-Log"] == 9.0
    assert rows[-1]["middlebury AbsRel"] == 0.251 and rows[-1]["middlebury SI-Log"] == 8.61


def test_tab18_compares_the_image_counts():
    header, rows = tables_by_name([summary_row("ibims", n_images=99)])["tab18_images"]
    assert header == ["method", "ibims"]
    assert [row["ibims"] for row in rows] == [99.0, 100]


def test_every_table_has_one_paper_value_per_column():
    for table in TABLES:
        assert len(table.paper) == len(table.columns), table.name
