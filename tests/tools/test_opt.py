"""``mpqc-opt``: any pipeline on a model, pass listing, annotations out, analysis saved between
runs."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import onnx
import pytest
from models import random_inputs, run_ort

from mpqc import passes
from mpqc.passes.infra.pipeline import text_options
from mpqc.tools import opt


def _opt(capsys: pytest.CaptureFixture[str], *argv: str | pathlib.Path) -> tuple[int, str, str]:
    code = opt.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_passes_lists_every_pass_and_option(capsys) -> None:
    code, out, _ = _opt(capsys, "--help-passes")
    assert code == 0
    listed = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert listed == passes.names()
    for name in passes.names():
        cls = passes.get(name)
        for field in dataclasses.fields(cls.Options):
            if field.name not in text_options(cls.Options):
                continue  # search's strategy_options: listed field by field under each strategy
            assert f"    {field.name}: " in out, (name, field.name)
            assert field.metadata.get("doc", "") in out
    # the strategies' own options, given as search's: search{strategy=nsga2,generations=100}
    strategies = out[out.index("\nsearch\n") :]
    for strategy, options in passes.get("search").components().items():
        assert f"    with strategy={strategy}:\n" in strategies
        for option in text_options(options):
            assert f"      {option}: " in strategies
    assert "      generations: int = 60\n          generations after the first" in strategies
    assert "beacon_fn" not in out  # a callable cannot be written in a pipeline
    assert (
        "    reads mpqc.cost, mpqc.cost.total, mpqc.sens.*; may read mpqc.calib.range, "
        "mpqc.sensinfo.*; writes mpqc.bits, mpqc.pareto, mpqc.report\n"
    ) in out
    assert "    uniform: str = ''\n        one choice for every layer" in out
    assert (
        "    method: minmax|percentile|entropy|mse|best|auto = 'minmax'" in out
    )  # a Literal lists its choices


def test_a_pipeline_run_writes_the_output(capsys, cnn_path, calib_dir, tmp_path) -> None:
    out = tmp_path / "q.onnx"
    code, _, err = _opt(
        capsys,
        cnn_path,
        "-p",
        "canonicalize,calibrate,lower-qdq{uniform=w4a8},verify",
        "-o",
        out,
        "--calib",
        calib_dir,
    )
    assert code == 0, err
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert {init.data_type for init in proto.graph.initializer} >= {
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT8,
    }
    run_ort(str(out), random_inputs(proto, 1)[0])


def test_report_json_contains_the_annotations(capsys, cnn_path, calib_dir, tmp_path) -> None:
    report_path = tmp_path / "report.json"
    code, _, err = _opt(
        capsys,
        cnn_path,
        "-p",
        "canonicalize,calibrate,lower-qdq{uniform=w8a8},verify",
        "--calib",
        calib_dir,
        "--report-json",
        report_path,
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["pipeline"] == "canonicalize,calibrate,lower-qdq{uniform=w8a8},verify"
    assert report["model"]["mpqc.report"]["verify"]["checker"] == "ok"
    assert report["nodes"]["c1"]["mpqc.bits"] == {"w": 8, "a": 8}
    assert report["values"] == {}  # lowering changed the graph and does not preserve the ranges

    code, _, err = _opt(
        capsys,
        cnn_path,
        "-p",
        "canonicalize,calibrate",
        "--calib",
        calib_dir,
        "--report-json",
        report_path,
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["values"]["image"]["mpqc.calib.range"]["method"] == "minmax"
    assert report["values"]["r2"]["mpqc.calib.range"]["lo"] == 0.0
    assert report["nodes"] == {}
    assert report["model"] == {
        "mpqc.report": {"calibrate": {"activations": 11, "method": "minmax"}}
    }


def test_stop_after_analysis_edit_bits_and_lower(capsys, cnn_path, calib_dir, tmp_path) -> None:
    analysed = tmp_path / "analysed.onnx"
    code, _, err = _opt(
        capsys, cnn_path, "-p", "canonicalize,calibrate", "-o", analysed, "--calib", calib_dir
    )
    assert code == 0, err
    proto = onnx.load(analysed)
    wanted = {"c1": '{"a":8,"w":8}', "c2": '{"a":8,"w":4}', "logits": '{"a":8,"w":2}'}
    for node in proto.graph.node:
        if node.output[0] in wanted:
            node.metadata_props.add(key="mpqc.bits", value=wanted[node.output[0]])
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, edited)

    lowered = tmp_path / "lowered.onnx"
    code, _, err = _opt(capsys, edited, "-p", "lower-qdq", "-o", lowered)
    assert code == 0, err
    types = {init.name: init.data_type for init in onnx.load(lowered).graph.initializer}
    assert types["w1.w8"] == onnx.TensorProto.INT8
    assert types["w2.w4"] == onnx.TensorProto.INT4
    assert types["w4.w2"] == onnx.TensorProto.INT2
    assert types["w3"] == onnx.TensorProto.FLOAT
    assert any(
        name.endswith(".a8.scale") for name in types
    )  # the saved ranges quantized activations


def test_reads_precondition_is_a_one_line_error(capsys, cnn_path) -> None:
    code, _, err = _opt(capsys, cnn_path, "-p", "search")
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("mpqc-opt: ") and "needs" in err


def test_notes_go_to_stderr(capsys, cnn_path) -> None:
    code, _, err = _opt(capsys, cnn_path, "-p", "lower-qdq{uniform=w8a8}")
    assert code == 0
    assert "mpqc-opt: note: lower-qdq: some activations have no calibrated range" in err


def test_missing_pipeline_is_a_one_line_user_error(capsys, cnn_path) -> None:
    with pytest.raises(SystemExit) as info:
        opt.main([str(cnn_path)])
    assert info.value.code == 1  # 2 means infeasible constraints
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "mpqc-opt: a model and -p PIPELINE are required (or --help-passes) (see mpqc-opt --help)"
    ]


def test_a_hand_edited_annotation_of_the_wrong_shape_is_one_line(capsys, tmp_path) -> None:
    import onnx_ir as ir
    from models import small_cnn

    model = small_cnn()
    conv = next(node for node in model.graph if node.op_type == "Conv")
    conv.metadata_props["mpqc.bits"] = '{"w": "four", "a": 8}'
    ir.save(model, tmp_path / "edited.onnx")
    code, _, err = _opt(
        capsys, tmp_path / "edited.onnx", "-p", "lower-qdq", "-o", tmp_path / "q.onnx"
    )
    assert code == 1 and not (tmp_path / "q.onnx").exists()
    assert err.splitlines() == [
        f"mpqc-opt: mpqc.bits on node '{conv.outputs[0].name}': mpqc.bits['w'] is 'four', not int"
    ]


def test_a_model_with_external_data_verifies_against_its_float_self(
    capsys, calib_dir, tmp_path
) -> None:
    import onnx_ir as ir
    from models import small_cnn

    onnx.save(
        ir.to_proto(small_cnn()),
        tmp_path / "m.onnx",
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    report_path = tmp_path / "r.json"
    code, _, err = _opt(
        capsys,
        tmp_path / "m.onnx",
        "-p",
        "canonicalize,calibrate,lower-qdq{uniform=w8a8},verify",
        "--calib",
        calib_dir,
        "--report-json",
        report_path,
    )
    assert code == 0, err
    assert json.loads(report_path.read_text())["model"]["mpqc.report"]["verify"]["sqnr_db"] > 30


def test_a_report_path_in_a_missing_folder_writes_nothing(capsys, cnn_path, tmp_path) -> None:
    out = tmp_path / "q.onnx"
    code, _, err = _opt(
        capsys,
        cnn_path,
        "-p",
        "canonicalize",
        "-o",
        out,
        "--report-json",
        tmp_path / "no" / "r.json",
    )
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("mpqc-opt: --report-json: cannot write")
    assert not out.exists()


def test_eval_feeds_sensitivity_task(capsys, cnn_path, calib_dir, tmp_path) -> None:
    """--eval makes the user's metric available to sensitivity-task, whose scores land in the
    report."""
    task = tmp_path / "task.py"
    task.write_text("def size(model):\n    return -float(model.ByteSize())\n")
    report = tmp_path / "r.json"
    code, _, _ = _opt(
        capsys,
        cnn_path,
        "-p",
        "calibrate,sensitivity-task{wbits=[2,8]}",
        "--calib",
        calib_dir,
        "--eval",
        f"{task}:size",
        "--report-json",
        report,
    )
    assert code == 0
    assert "mpqc.sens.task" in report.read_text()


def test_measure_and_the_fusion_warnings(capsys, cnn_path, calib_dir, tmp_path) -> None:
    """--measure times the result against the float input and its w8a8 lowering (stdout); verify's
    fusion warnings go to stderr, one line each."""
    report_path = tmp_path / "r.json"
    code, out, err = _opt(
        capsys,
        cnn_path,
        "-p",
        "canonicalize,calibrate,lower-qdq{uniform=w4a8},verify",
        "--hw",
        "x86_avx2",
        "--calib",
        calib_dir,
        "--measure",
        "--report-json",
        report_path,
    )
    assert code == 0, err
    assert err.count("mpqc-opt: warning: ") == 3  # the three 4-bit convs
    assert "mpqc-opt: warning: c1 at w4a8 runs as DequantizeLinear + float " in err
    lines = out.splitlines()
    assert lines[0].startswith("mpqc-opt: measured: ") and "onnxruntime " in lines[0]
    assert [line.split()[2] for line in lines[2:5]] == ["mpqc", "float", "uniform"]
    measured = json.loads(report_path.read_text())["measured"]
    assert all(row["measured_s"] > 0 for row in measured["rows"])


def test_measure_needs_a_float_input(capsys, cnn_path, calib_dir, tmp_path) -> None:
    quantized = tmp_path / "q.onnx"
    code, _, err = _opt(capsys, cnn_path, "-p", "lower-qdq{uniform=w8a8}", "-o", quantized)
    assert code == 0, err
    code, _, err = _opt(capsys, quantized, "-p", "verify", "--measure")
    assert code == 1 and "--measure: times the result against the float model" in err
