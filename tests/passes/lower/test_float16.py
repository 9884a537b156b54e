"""Models whose float tensors are float16 compile (passes/lib/widen.py).

Quantized layers compute in float32 between Casts: the emitted model passes the checker, runs in
onnxruntime with onnxruntime's integer kernels fused, keeps its float16 interface, and the
evaluator computes what onnxruntime computes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from models import build, random_inputs, run_ort

import mpqc
from mpqc.passes import CalibrationData, CompileContext, PassManager, build_pipeline
from mpqc.passes.lib.evaluator import Evaluator

# r1 is read by the next Conv (two widened layers in a row) and by a float16 Add (a Cast back);
# the Gemm's output is the model's result (no output quantizer, as in a float32 model).
HALF_CNN = """
<ir_version: 10, opset_import: ["" : 17]>
half ({t}[N,3,8,8] x) => ({t}[N,10] y) {{
  c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)
  r1 = Relu(c1)
  c2 = Conv <pads=[1,1,1,1]> (r1, w2, b2)
  r2 = Relu(c2)
  s = Add(r2, r1)
  p = GlobalAveragePool(s)
  f = Flatten(p)
  y = Gemm <transB=1> (f, w3, b3)
}}
"""
_WEIGHTS = {
    "w1": (8, 3, 3, 3),
    "b1": (8,),
    "w2": (8, 8, 3, 3),
    "b2": (8,),
    "w3": (10, 8),
    "b3": (10,),
}
HALF_MLP = """
<ir_version: 10, opset_import: ["" : 17]>
mlp ({t}[N,64] x) => ({t}[N,8] y) {{
  h = MatMul(x, w1)
  r = Relu(h)
  y = Gemm(r, w2, b2)
}}
"""
_MLP_WEIGHTS = {"w1": (64, 64), "w2": (64, 8), "b2": (8,)}


def _model(text: str, weights: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    return build(text.format(t="float16"), weights, dtype=np.float16)


def _optimized_ops(model: ir.Model, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def _sqnr(reference: np.ndarray, got: np.ndarray) -> float:
    reference, got = reference.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - got) ** 2)))


def test_float16_cnn_lowers_at_w8a8_with_integer_kernels(tmp_path) -> None:
    proto = _model(HALF_CNN, _WEIGHTS)
    samples = random_inputs(proto, 10)
    context = CompileContext(calibration=CalibrationData(tuple(samples)))
    model = ir.from_proto(proto)
    PassManager(build_pipeline("canonicalize,calibrate,lower-qdq{uniform=w8a8}", context))(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert [v.dtype for v in (*model.graph.inputs, *model.graph.outputs)] == [
        ir.DataType.FLOAT16
    ] * 2
    ops = _optimized_ops(model, tmp_path)
    assert ops.count("QLinearConv") == 2 and "QGemm" in ops
    # the model's result is not quantized, as in a float32 model
    assert model.graph.outputs[0].producer().op_type == "Cast"
    assert model.graph.outputs[0].producer().inputs[0].producer().op_type == "Gemm"
    for sample in samples[:3]:
        want = run_ort(proto.SerializeToString(), sample)[0]
        got = run_ort(model, sample)[0]
        assert got.dtype == np.float16 and _sqnr(want, got) > 25


def test_evaluator_computes_what_the_lowered_float16_model_computes() -> None:
    proto = _model(HALF_CNN, _WEIGHTS)
    samples = random_inputs(proto, 10)
    context = CompileContext(calibration=CalibrationData(tuple(samples)))
    model = ir.from_proto(proto)
    PassManager(build_pipeline("canonicalize,calibrate", context))(model)
    evaluator = Evaluator(model, samples, wbits=(8,))
    simulated = evaluator.run({name: (8, 8) for name in ("c1", "c2", "y")})
    lowered = model.clone()
    PassManager(build_pipeline("lower-qdq{uniform=w8a8}", context))(lowered)
    for sample, want in zip(samples, simulated, strict=True):
        got = run_ort(lowered, sample, "basic")[0].astype(np.float32)
        # the float16 output's own rounding
        assert np.abs(got - want[0]).max() <= 1e-3 * np.abs(want[0]).max()


def test_default_pipeline_compiles_a_float16_model() -> None:
    proto = _model(HALF_CNN, _WEIGHTS)
    result = mpqc.compile(
        proto, mpqc.CompileOptions(hw="x86_avx512_vnni", calibration=random_inputs(proto, 12))
    )
    onnx.checker.check_model(result.model, full_check=True)
    assert result.model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_float16_matmuls_lower_without_data_and_to_matmul_nbits() -> None:
    proto = _model(HALF_MLP, _MLP_WEIGHTS)
    for options in (
        mpqc.CompileOptions(uniform="w8a8"),
        mpqc.CompileOptions(uniform="w4a8", weight_only=True),
    ):
        result = mpqc.compile(proto, options)
        onnx.checker.check_model(result.model, full_check=True)
        x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float16)
        (y,) = run_ort(result.model, {"x": x})
        assert y.dtype == np.float16 and y.shape == (2, 8)
