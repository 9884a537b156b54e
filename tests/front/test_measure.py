"""--measure: the emitted model timed against float and uniform w8a8 on this machine, next to the
cost model's predictions; from Python and the command line. Timings are checked for structure and
sign only (the machine is shared), never against a wall-time bound."""

from __future__ import annotations

import json
import pathlib
import tempfile

import onnx_ir as ir
import onnxruntime as ort
import pytest

import mpqc
from mpqc import cli, examples
from mpqc.core import MpqcError
from mpqc.hwspecs.machine import cpu_name

MODELS = ["mpqc", "float", "uniform w8a8"]


@pytest.fixture(scope="module")
def searched() -> mpqc.CompileResult:
    options = mpqc.CompileOptions(
        hw="x86_avx2",
        calibration=examples.digits_calibration()[:20],
        max_size="0.2x",
        max_latency="1s",
        recover=False,
        measure=True,
        measure_seconds=0.05,
    )
    return mpqc.compile(str(examples.digits_model_path()), options)


def test_three_models_measured_and_predicted(searched) -> None:
    measurement = searched.measurement
    assert measurement is not None
    assert [row.model for row in measurement.rows] == MODELS
    for row in measurement.rows:
        assert row.measured_s > 0 and row.wall_s > 0 and row.predicted_s > 0
    assert measurement.runs >= 5 and measurement.threads == 1
    assert measurement.cpu == cpu_name() and measurement.onnxruntime == ort.__version__
    assert measurement.spec == "x86_avx2" and measurement.notes == ()
    # the chosen model's prediction is the total the search minimized (which the front stores to
    # 6 significant digits)
    chosen = searched.pareto["chosen_objectives"]["latency"]
    assert measurement.row("mpqc").predicted_s == pytest.approx(chosen, rel=5e-6)
    speedups = measurement.speedups()
    assert set(speedups) == {"float", "uniform w8a8"}
    assert all(measured > 0 and predicted > 0 for measured, predicted in speedups.values())
    assert json.loads(json.dumps(measurement.to_json()))["rows"][0]["model"] == "mpqc"
    # measuring is one more step for the instruments that watch passes (the report's timings)
    assert [name for name, _ in searched.timing][-2:] == ["verify", "measure"]


def test_measuring_leaves_the_emitted_model_as_it_was(searched) -> None:
    """Numbers from one machine never enter the model: the bytes are those of a run without."""
    options = mpqc.CompileOptions(
        hw="x86_avx2",
        calibration=examples.digits_calibration()[:20],
        max_size="0.2x",
        max_latency="1s",
        recover=False,
    )
    plain = mpqc.compile(str(examples.digits_model_path()), options)
    assert plain.measurement is None
    assert ir.to_proto(plain.ir_model) == ir.to_proto(searched.ir_model)


def test_weight_only_has_no_prediction_and_says_why() -> None:
    options = mpqc.CompileOptions(
        hw="x86_avx2", weight_only=True, measure=True, measure_seconds=0.02
    )
    measurement = mpqc.compile(str(examples.digits_model_path()), options).measurement
    assert measurement.row("mpqc").predicted_s is None
    assert measurement.row("float").predicted_s > 0
    assert measurement.notes == (
        "uniform w8a8 keeps activations float: there is no calibration data",
        "no prediction for mpqc's model: the spec prices no pair with float activations "
        "(weight-only layers)",
    )


def test_a_measuring_time_that_is_not_positive_is_refused() -> None:
    options = mpqc.CompileOptions(measure=True, measure_seconds=0)
    with pytest.raises(MpqcError, match="positive number of seconds") as error:
        mpqc.compile(str(examples.digits_model_path()), options)
    assert error.value.field == "measure_seconds"


def test_the_command_prints_and_reports_the_measurement_and_writes_nothing_else(
    tmp_path: pathlib.Path, capsys, monkeypatch
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, md, js = out_dir / "q.onnx", out_dir / "r.md", out_dir / "r.json"
    argv = ["--hw", "x86_avx2", "--uniform", "w4a8", "--no-recover", "-o", str(out)]
    assert cli.main([*argv, "--measure", "--report", str(md), "--report-json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert f"  measured    {cpu_name()} (" in printed
    assert f"onnxruntime {ort.__version__}, 1 thread, median of " in printed
    for model in MODELS:
        assert f"\n              {model:<14} " in printed
    assert "mpqc's model runs at " in printed and "the speed of uniform w8a8 (predicted " in printed
    measured = json.loads(js.read_text())["measured"]
    assert [row["model"] for row in measured["rows"]] == MODELS
    assert all(row["measured_s"] > 0 and row["predicted_s"] > 0 for row in measured["rows"])
    report = md.read_text()
    assert "## What onnxruntime runs" in report and "## Measured latency" in report
    assert "| uniform w8a8 | " in report
    assert sorted(path.name for path in out_dir.iterdir()) == ["q.onnx", "r.json", "r.md"]
    assert list(temporary.iterdir()) == []


def test_without_measure_there_is_no_measurement(tmp_path, capsys) -> None:
    out, js = tmp_path / "q.onnx", tmp_path / "r.json"
    argv = ["--hw", "x86_avx2", "--uniform", "w8a8", "-o", str(out), "--report-json", str(js)]
    assert cli.main(argv) == 0
    assert "measured" not in capsys.readouterr().out
    assert json.loads(js.read_text())["measured"] is None


def test_a_pipeline_without_canonicalize_measures_a_copy_of_its_input() -> None:
    """The float model is kept after the pipeline's calibrate or canonicalize step, or copied
    from the input before a pipeline that has neither (then calibrated for the w8a8 reference; the
    pipeline itself, without calibrate, emits float activations, which the spec does not price)."""
    options = mpqc.CompileOptions(
        hw="x86_avx2",
        calibration=examples.digits_calibration()[:10],
        pipeline="lower-qdq{uniform=w8a8},verify",
        measure=True,
        measure_seconds=0.02,
    )
    measurement = mpqc.compile(str(examples.digits_model_path()), options).measurement
    assert [row.model for row in measurement.rows] == MODELS
    assert all(row.measured_s > 0 for row in measurement.rows)
    assert [row.predicted_s is None for row in measurement.rows] == [True, False, False]
    assert measurement.notes[0].startswith("no prediction for mpqc's model")
