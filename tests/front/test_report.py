"""The per-layer explanation as the report renders it: the search's reasons and numbers, the layers
lower-qdq left float, and the files and summary line the command writes."""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest
from models import build, random_inputs

import mpqc
from mpqc import cli, examples
from mpqc.passes.choose.explain import PINNED
from mpqc.report import Explanation, LayerRow, ReportFormatError, markdown, write_report

HANDMADE = """
<ir_version: 10, opset_import: ["" : 17]>
handmade (float[1,16] x) => (float[1,16] y) {
  h1 = MatMul(x, w1)
  r1 = Relu(h1)
  h2 = MatMul(r1, w2)
  r2 = Relu(h2)
  h3 = MatMul(r2, w3)
  r3 = Relu(h3)
  h4 = MatMul(r3, w4)
  n = Constant <value = int64 {2}> ()
  go = Constant <value = bool {1}> ()
  y = Loop (n, go, h4) <body = step (int64 i, bool ci, float[1,16] h) => (bool co, float[1,16] ho) {
     co = Identity(ci)
     t = MatMul(h, wl)
     ho = Tanh(t)
  }>
}
"""


@pytest.fixture(scope="module")
def handmade() -> onnx.ModelProto:
    """Four MatMuls (the first and last pinned), a big one worth dropping, and a Loop body layer."""
    return build(
        HANDMADE,
        {"w1": (16, 16), "w2": (16, 256), "w3": (256, 16), "w4": (16, 16), "wl": (16, 16)},
        seed=3,
    )


def _explained(model, **kwargs) -> Explanation:
    result = mpqc.compile(model, mpqc.CompileOptions(hw="x86_avx2", **kwargs))
    assert result.explanation is not None
    return result.explanation


def test_every_layer_above_its_cheapest_bits_has_a_reason_on_the_digits_model() -> None:
    result = mpqc.compile(
        str(examples.digits_model_path()),
        mpqc.CompileOptions(
            hw="x86_avx2",
            calibration=examples.digits_calibration(),
            max_size="0.2x",
            max_latency="1s",
            wbits=(8, 4),
        ),
    )
    explanation = result.explanation
    rows = {row.layer: row for row in explanation.rows}
    assert {name: row.chosen for name, row in rows.items()} == result.pareto["points"][
        result.pareto["chosen"]
    ]["bits"]
    assert rows["stem.conv"].reason == PINNED and rows["head.fc"].reason == PINNED
    for row in explanation.rows:
        chosen = next(c for c in row.candidates if c.pair == row.chosen)
        at_cheapest = chosen.size == min(c.size for c in row.candidates)
        assert (row.reason is None) == (
            at_cheapest and row.layer not in ("stem.conv", "head.fc")
        ), row
        if row.reason and row.reason.startswith("kept"):
            assert "the budget was met without it" in row.reason
    assert explanation.predicted["size"] == pytest.approx(
        result.pareto["chosen_objectives"]["size"], rel=1e-5
    )
    assert explanation.budget == pytest.approx(result.pareto["constraints"]["size"])
    kept = explanation.kept()
    assert explanation.summary().startswith(f"{len(kept)} of 6 layers: 2 pinned")


def test_the_handmade_model_reports_pins_search_choices_and_the_loop_body(handmade) -> None:
    """The Loop body's layer is searched and never pinned, though it runs last."""
    calibration = random_inputs(handmade, 10)
    # All at w8a8 is 11.3 kB; the budget needs one of the two big middle layers at w4a8, not both.
    explanation = _explained(
        handmade, calibration=calibration, max_size="9.5kB", max_latency="1s", wbits=(8, 4)
    )
    rows = {row.layer: row for row in explanation.rows}
    assert rows["h1"].reason == PINNED and rows["h4"].reason == PINNED
    dropped, kept = sorted((rows["h2"], rows["h3"]), key=lambda row: row.chosen != "w4a8")
    # (the kept MatMul at 8 bits, its range static or measured per run)
    assert dropped.chosen == "w4a8" and dropped.reason is None
    assert kept.chosen in ("w8a8", "w8adyn")
    assert kept.reason.startswith("kept: w4a8 would add +") and kept.reason.endswith(
        "; the budget was met without it"
    )
    assert rows["y/body/t"].chosen in ("w8a8", "w8adyn", "w4a8")  # searched like the others
    assert [c.pair for c in rows["h3"].candidates] == ["w8a8", "w8adyn", "w4a8"]
    assert all(
        c.damage >= 0 and c.size > 0 and c.latency_s > 0
        for row in explanation.rows
        for c in row.candidates
    )


def test_uniform_bits_need_no_reason(handmade) -> None:
    """The Loop body's layer is lowered at the same bits."""
    explanation = _explained(handmade, calibration=random_inputs(handmade, 6), uniform="w8a8")
    assert explanation.strategy is None
    assert {row.layer: row.chosen for row in explanation.rows if row.reason is None} == {
        f"h{i}": "w8a8" for i in range(1, 5)
    } | {"y/body/t": "w8a8"}


#: What the search and lower-qdq write into ``mpqc.report``, by hand: 'a' dropped, 'b' kept.
REPORT = {
    "search": {
        "strategy": "ilp",
        "metric": "output",
        "objective": "size",
        "budget": 5000.0,
        "cutoff": 2e-3,
        "unit": "kB",
        "scale": 1e3,
        "predicted": {"size": 5600.0},
        "layers": [
            {
                "layer": "a",
                "op": "Conv",
                "chosen": "w4a8",
                "candidates": [
                    {"pair": "w8a8", "damage": 0.0, "size": 2000.0, "latency_s": 1e-3},
                    {"pair": "w4a8", "damage": 2.0, "size": 1000.0, "latency_s": 2e-3},
                ],
                "reason": None,
                "kind": None,
            },
            {
                "layer": "b",
                "op": "Conv",
                "chosen": "w8a8",
                "candidates": [],
                "reason": "kept: w4a8 would add +9 damage to save 2 kB",
                "kind": "kept by the search",
            },
        ],
    },
    "lower-qdq": {"left_float": [{"layer": "lstm", "reason": "no quantized form"}]},
}


def test_the_explanation_is_read_back_from_the_report() -> None:
    explanation = Explanation.of(mpqc.ir.load(examples.digits_model_path()), REPORT)
    a, b, lstm = explanation.rows
    assert a.candidates[1].damage == 2.0 and b.kind == "kept by the search"
    assert (lstm.chosen, lstm.reason) == ("float", "no quantized form")
    assert explanation.summary() == "2 of 3 layers: 1 kept by the search (b), 1 left float (lstm)"
    assert dataclasses.asdict(explanation)["cutoff"] == 2e-3


def test_markdown_and_html_carry_every_row(tmp_path) -> None:
    explanation = Explanation.of(mpqc.ir.load(examples.digits_model_path()), REPORT)
    text = markdown(explanation)
    assert text.count("\n| ") == 1 + 3 and "| lstm |  | float |  | no quantized form |" in text
    page = write_report(explanation, tmp_path / "r.html").read_text()
    assert (
        page.startswith("<!DOCTYPE html>") and page.count("<tr") == 1 + 3 and 'class="kept"' in page
    )
    with pytest.raises(ReportFormatError, match="name a .html or .md file"):
        write_report(explanation, tmp_path / "r.pdf")


def test_cli_writes_the_report_the_json_and_a_summary_line(tmp_path, capsys) -> None:
    out, md, js = tmp_path / "q.onnx", tmp_path / "r.md", tmp_path / "r.json"
    assert (
        cli.main(
            [
                "--hw",
                "x86_avx2",
                "-o",
                str(out),
                "--max-size",
                "0.2x",
                "--max-latency",
                "1s",
                "--report",
                str(md),
                "--report-json",
                str(js),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    explanation = json.loads(js.read_text())["explanation"]
    assert f"kept high   {explanation['summary']} (see {md})" in printed
    assert len(explanation["layers"]) == 6 and explanation["strategy"] == "ilp"
    assert md.read_text().count("pinned (first/last compute layer)") == 2


def test_cli_refuses_a_report_format_before_any_work(tmp_path, capsys) -> None:
    out = tmp_path / "q.onnx"
    assert cli.main(["--hw", "x86_avx2", "-o", str(out), "--report", str(tmp_path / "r.txt")]) == 1
    assert "name a .html or .md file" in capsys.readouterr().err and not out.exists()


def test_markdown_escapes_what_a_node_name_can_hold() -> None:
    # Node names are the model author's text: a newline would end the table row, raw HTML would
    # run in a markdown viewer, a '|' would open a new cell.
    hostile = "conv\n<script>alert(1)</script> | & more"
    explanation = Explanation((LayerRow(hostile, "Conv", "w8a8", (), "kept", "pinned"),))
    text = markdown(explanation, title="model <b>x</b>\n# injected")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 1 and "<script>" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\| &amp; more" in rows[1]
    assert sum(line.startswith("#") for line in text.splitlines()) == 1


def test_the_summary_names_a_few_layers_per_group_and_counts_the_rest() -> None:
    rows = tuple(LayerRow(f"l{i}", "Conv", "w8a8", (), "pinned", "pinned") for i in range(6))
    explanation = Explanation(rows, strategy="ilp")
    assert explanation.summary() == "6 of 6 layers: 6 pinned (l0, l1, l2, l3 and 2 more)"


def test_the_plotted_points_are_the_cost_models(tmp_path) -> None:
    """Priced from the layers' candidates, the all-w8a8 point of the front lands where the
    search put it, and the uniform int8 point is that point."""
    from mpqc.report_plot import front_points

    result = mpqc.compile(
        str(examples.digits_model_path()),
        mpqc.CompileOptions(
            hw="x86_avx2",
            calibration=examples.digits_calibration(),
            max_size="0.2x",
            max_latency="1s",
        ),
    )
    front, chosen, int8 = front_points(result.explanation, result.pareto)
    assert len(front) == len(result.pareto["points"])
    assert chosen.latency == pytest.approx(result.explanation.predicted["latency"], rel=1e-6)
    everything8 = [
        point
        for point, raw in zip(front, result.pareto["points"], strict=True)
        if set(raw["bits"].values()) == {"w8a8"}
    ]
    assert everything8 and int8.size == pytest.approx(everything8[0].size, rel=1e-6)
    assert int8.error == pytest.approx(everything8[0].error, rel=1e-4)
    assert int8.latency == pytest.approx(everything8[0].latency, rel=1e-9)
