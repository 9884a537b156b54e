"""verify: checker, onnxruntime, fidelity on held-out data, size; and failing loudly."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import random_inputs, small_cnn

from mpqc.ir import annotations as A
from mpqc.ir import tensor_bytes
from mpqc.passes import CompileContext, PassInputError, PassManager, get, load_calibration
from mpqc.passes.verify.verify import reference_outputs


def _context(count: int = 10) -> CompileContext:
    samples = load_calibration(random_inputs(small_cnn(), count))
    context = CompileContext(reference=ir.to_proto(small_cnn()).SerializeToString())
    context.calibration, context.held_out = samples.split()
    return context


def _compile(
    choice: str, verify_options: str = "", calibrate: bool = True, samples: int = 10
) -> tuple[ir.Model, CompileContext]:
    context = _context(samples)
    steps = [get("canonicalize")(context=context)]
    if calibrate:
        steps.append(get("calibrate")(context=context))
    steps.append(get("lower-qdq")(context=context, uniform=choice))
    model = small_cnn()
    PassManager(steps)(model)
    options = get("verify").Options(
        **({"min_sqnr_db": float(verify_options)} if verify_options else {})
    )
    get("verify")(options, context)(model)
    return model, context


def test_verify_reports_fidelity_and_size() -> None:
    model, _ = _compile("w8a8")
    report = A.REPORT.get(model)["verify"]
    assert report["checker"] == "ok" and report["runtime"].startswith("onnxruntime ")
    assert report["samples"] == 2  # every fifth of ten samples is held out
    assert 30 < report["sqnr_db"] < 80
    assert 0.0 <= report["top1_agreement"] <= 1.0
    # the serialized model as verify saw it: all tensors plus the graph, before its own report
    # was added
    assert tensor_bytes(model) < report["bytes"] < ir.to_proto(model).ByteSize()
    assert A.REPORT.section(model, "lower-qdq")["lowered_layers"] == 4
    assert "samples_from" not in report


def test_too_few_samples_to_hold_out_are_called_calibration_samples() -> None:
    model, context = _compile("w8a8", samples=3)
    report = A.REPORT.get(model)["verify"]
    assert report["samples"] == 3 and report["samples_from"] == "calibration"
    assert any("none were held out" in note for note in context.notes)


def test_fewer_bits_give_lower_sqnr() -> None:
    sqnr = {
        choice: A.REPORT.get(_compile(choice)[0])["verify"]["sqnr_db"]
        for choice in ("w16a16", "w8a8", "w4a8")
    }
    assert sqnr["w16a16"] > sqnr["w8a8"] > sqnr["w4a8"]


def test_verify_raises_when_the_sqnr_floor_is_missed() -> None:
    with pytest.raises(
        PassInputError, match=r"verify: output SQNR \d+\.\d dB is below the required 200\.0 dB"
    ):
        _compile("w8a8", "200")
    _compile("w8a8", "10")


def test_verify_without_reference_still_checks_and_runs() -> None:
    model = small_cnn()
    get("lower-qdq")(uniform="w8a8")(model)
    get("verify")()(model)
    report = A.REPORT.get(model)["verify"]
    assert report["checker"] == "ok" and "sqnr_db" not in report


def test_verify_rejects_an_invalid_model() -> None:
    model = small_cnn()
    next(n for n in model.graph if n.op_type == "Relu").op_type = "NoSuchOp"
    with pytest.raises(PassInputError, match="verify: the emitted model fails onnx.checker"):
        get("verify")()(model)


def test_verify_uses_the_task_metric() -> None:
    context = _context()
    calls = []

    def metric(proto: object) -> float:
        calls.append(proto)
        return 0.5 + 0.25 * len(calls)

    context.eval_fn = metric
    model = small_cnn()
    get("verify")(context=context)(model)
    report = A.REPORT.get(model)["verify"]
    assert report["task_metric"] == 0.75 and report["task_metric_float"] == 1.0


def test_fidelity_of_an_output_that_is_not_numbers_is_not_measured() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (string[2] s) => (string[2] t) { t = Identity(s) }
    """
    session = ort.InferenceSession(onnx.parser.parse_model(text).SerializeToString())
    assert reference_outputs(session, [{"s": np.array(["a", "b"], dtype=object)}]) is None


def test_a_float_model_onnxruntime_cannot_run_is_noted_not_compared() -> None:
    # An opset-6 Add: canonicalize upgrades the compiled copy, the float model stays as given.
    text = """
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[1,3,8,8] image) => (float[1,3,8,8] y) { y = Add <broadcast=1> (image, image) }
    """
    context = _context()
    context.reference = onnx.parser.parse_model(text).SerializeToString()
    model = small_cnn()
    get("verify")(context=context)(model)
    report = A.REPORT.get(model)["verify"]
    assert report["checker"] == "ok" and "sqnr_db" not in report
    assert any("cannot run the float model as given" in note for note in context.notes)
