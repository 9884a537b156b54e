"""verify's account of what onnxruntime runs: per layer the kernel in onnxruntime's optimized graph
against the plan's, warnings with reasons, from the Python API and the command line."""

from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import build, random_inputs

from mpqc import cli, hwspecs
from mpqc.core.bits import Bits
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CompileContext, load_calibration
from mpqc.pipeline import Pipeline

# A conv, then a MatMul whose output a Sigmoid reads (so it gets an output quantizer and fuses).
MIXED = """
<ir_version: 10, opset_import: ["" : 17]>
mixed (float[1,3,8,8] x) => (float[1,10] y) {
  c = Conv <pads=[1,1,1,1]> (x, wc, bc)
  r = Relu(c)
  f = Flatten(r)
  m = MatMul(f, wm)
  y = Sigmoid(m)
}
"""


@pytest.fixture(scope="module")
def mixed() -> onnx.ModelProto:
    return build(MIXED, {"wc": (8, 3, 3, 3), "bc": (8,), "wm": (512, 10)})


def _verified(
    model: onnx.ModelProto,
    bits: dict[str, str],
    planned: dict[str, str] | None = None,
    hw: str = "x86_avx2",
) -> tuple[dict, CompileContext]:
    """``model`` calibrated, given ``bits`` per layer by hand, lowered for ``hw`` and verified;
    ``planned`` overrides the kernels lower-qdq's section says the plan predicted."""
    samples = load_calibration(random_inputs(model, 10))
    context = CompileContext(hw=hwspecs.load(hw), reference=model.SerializeToString())
    context.calibration, context.held_out = samples.split()
    lowered = ir.from_proto(model)
    Pipeline("canonicalize,calibrate", context).run_ir(lowered)
    for layer in quantizable_layers(lowered.graph):
        annotations.BITS.set(layer.node, annotations.layer_bits(Bits.parse(bits[layer.name])))
    Pipeline("lower-qdq", context).run_ir(lowered)
    if planned is not None:
        section = annotations.REPORT.section(lowered, "lower-qdq")
        annotations.REPORT.set_section(
            lowered, "lower-qdq", {**section, "kernels": {**section["kernels"], **planned}}
        )
    Pipeline("verify", context).run_ir(lowered)
    return annotations.REPORT.section(lowered, "verify")["kernels"], context


def test_a_four_bit_conv_runs_in_float_with_a_warning_and_the_matmul_fuses(mixed) -> None:
    kernels, _ = _verified(mixed, {"c": "w4a8", "m": "w8a8"})
    conv, matmul = kernels["layers"]
    assert conv == {
        "layer": "c",
        "op": "Conv",
        "bits": "w4a8",
        "runs": "FusedConv",  # onnxruntime's Conv + Relu
        "kernel": "dequantize-float",
        "planned": "dequantize-float",
    }
    assert matmul["runs"] in ("QLinearMatMul", "MatMulIntegerToFloat")
    assert matmul["kernel"] == matmul["planned"] == "integer"
    assert kernels["warnings"] == [
        "c at w4a8 runs as DequantizeLinear + float FusedConv: onnxruntime has no 4-bit conv kernel"
    ]


def test_a_dynamic_range_layer_is_named_by_its_own_op(mixed) -> None:
    """Its MatMul became MatMulInteger, Cast and Mul, and the annotated node is that Mul: the row
    still says MatMul."""
    kernels, _ = _verified(mixed, {"c": "w8a8", "m": "w8adyn"}, hw="x86_avx512_vnni")
    matmul = kernels["layers"][1]
    assert (matmul["op"], matmul["bits"]) == ("MatMul", "w8adyn")
    assert matmul["kernel"] == matmul["planned"] == "dynamic-integer"


def test_a_kernel_the_plan_did_not_predict_is_a_warning(mixed) -> None:
    kernels, _ = _verified(mixed, {"c": "w8a8", "m": "w8a8"}, planned={"m": "dequantize-float"})
    assert kernels["layers"][0]["runs"] == "QLinearConv"
    (warning,) = kernels["warnings"]
    assert warning.startswith("m at w8a8 runs as ") and warning.endswith(
        "(integer); the plan predicted dequantize-float (what the cost pass priced)"
    )


def test_sixteen_bit_activations_give_their_reason(mixed) -> None:
    kernels, _ = _verified(mixed, {"c": "w8a16", "m": "w8a8"})
    assert kernels["warnings"][0] == (
        "c at w8a16 runs as DequantizeLinear + float FusedConv: onnxruntime has no integer conv "
        "kernel for 16-bit activations"
    )


def test_the_optimized_graph_is_written_to_a_folder_that_is_removed(
    mixed, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _verified(mixed, {"c": "w8a8", "m": "w8a8"})
    assert list(tmp_path.iterdir()) == []


def test_the_command_prints_the_count_and_the_warning_and_reports_them(
    mixed, tmp_path: pathlib.Path, capsys
) -> None:
    model, calib, plan = tmp_path / "m.onnx", tmp_path / "calib", tmp_path / "plan.yaml"
    onnx.save(mixed, model)
    calib.mkdir()
    for index, sample in enumerate(random_inputs(mixed, 10)):
        np.savez(calib / f"{index}.npz", **sample)
    plan.write_text(
        'layout: {weight_only: false, block_size: 0}\nlayers:\n  "c": {bits: w4a8}\n'
        '  "m": {bits: w8a8}\n'
    )
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    argv = [str(model), "--hw", "x86_avx2", "--calib", str(calib), "--plan", str(plan)]
    assert cli.main([*argv, "-o", str(out), "--report-json", str(report), "--no-recover"]) == 0
    printed = capsys.readouterr().out
    assert "  kernels     1 of 2 quantized layers run as quantized kernels (1 " in printed
    assert "; 1 as DequantizeLinear + float; 1 warning\n" in printed
    assert (
        "  warning     c at w4a8 runs as DequantizeLinear + float FusedConv: onnxruntime has no "
        "4-bit conv kernel\n" in printed
    )
    kernels = json.loads(report.read_text())["report"]["verify"]["kernels"]
    assert [row["kernel"] for row in kernels["layers"]] == ["dequantize-float", "integer"]
