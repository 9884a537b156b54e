"""The size objective prices exactly what lower-qdq writes (an upper bound where quantizers are
shared)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from models import random_inputs, small_cnn

from mpqc import hwspecs
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, PassManager, build_pipeline
from mpqc.passes.lib.plan import layer_plan, stored_bytes

CHOICES = [(8, 8), (4, 8), (2, 8), (8, 4), (32, 32), (8, 16), (3, 6), (16, 16)]


@pytest.fixture(scope="module")
def calibrated() -> ir.Model:
    model = small_cnn()
    context = CompileContext(calibration=CalibrationData(tuple(random_inputs(model, 4))))
    PassManager(build_pipeline("canonicalize,calibrate", context))(model)
    return model


def _tensor_bytes(model: ir.Model) -> int:
    return sum(
        v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
    )


@pytest.mark.parametrize("spec_name", ["x86_avx2", "arm_a72", None])
@pytest.mark.parametrize("seed", range(6))
def test_written_tensors_match_the_prediction(
    calibrated: ir.Model, spec_name: str | None, seed: int
) -> None:
    spec = hwspecs.load(spec_name) if spec_name else None
    model = ir.from_proto(ir.to_proto(calibrated))
    layers = quantizable_layers(model.graph)
    owned = {
        v.name
        for layer in layers
        for v in layer.node.inputs
        if v is not None and v.const_value is not None
    }
    fixed = sum(
        v.const_value.nbytes for name, v in model.graph.initializers.items() if name not in owned
    )
    rng = np.random.default_rng(seed)
    runs = [
        (w, a)
        for w, a in CHOICES
        if spec is None or ((w == 32 or w in spec.weight_bits) and (a == 32 or a in spec.act_bits))
    ]
    config = [runs[i] for i in rng.integers(len(runs), size=len(layers))]
    predicted = fixed + sum(
        stored_bytes(layer, layer_plan(layer, w, a, spec=spec))
        for layer, (w, a) in zip(layers, config, strict=True)
    )
    for layer, (w, a) in zip(layers, config, strict=True):
        annotations.BITS.set(layer.node, {"w": w, "a": a})
    PassManager(build_pipeline("lower-qdq", CompileContext(hw=spec)))(model)
    written = _tensor_bytes(model)
    assert written <= predicted <= written * 1.01 + 16


def test_float_layer_costs_its_float_weights(calibrated: ir.Model) -> None:
    layer = quantizable_layers(calibrated.graph)[0]
    weight, bias = layer.weight_array(), layer.node.inputs[2].const_value.numpy()
    assert stored_bytes(layer, layer_plan(layer, 32, 32)) == 4 * (weight.size + bias.size)


LSTM = """
<ir_version: 10, opset_import: ["" : 17]>
rnn (float[5,1,8] x) => (float[5,1,1,6] y) {
  y = LSTM <hidden_size=6> (x, w, r, b)
}
"""


def test_an_lstms_recurrence_and_biases_are_counted() -> None:
    from models import build

    model = ir.from_proto(build(LSTM, {"w": (1, 24, 8), "r": (1, 24, 6), "b": (1, 48)}))
    context = CompileContext(calibration=CalibrationData(tuple(random_inputs(model, 3))))
    PassManager(build_pipeline("canonicalize,calibrate", context))(model)
    (layer,) = quantizable_layers(model.graph)
    predicted = stored_bytes(layer, layer_plan(layer, 8, 8))
    annotations.BITS.set(layer.node, {"w": 8, "a": 8})
    PassManager(build_pipeline("lower-qdq", CompileContext()))(model)
    written = _tensor_bytes(model)
    assert written <= predicted <= written + 16
    assert predicted > 24 * 6 + 4 * 48  # the int8 recurrence weights and the float biases are in it
    assert "r" not in model.graph.initializers


EMBEDDING = """
<ir_version: 10, opset_import: ["" : 17]>
embed (int64[N,5] ids) => (float[N,5,3] y, float[N,5,4] e) {
  e = Gather(table, ids)
  y = MatMul(e, w)
}
"""


@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_tables_are_gathered_as_integers(bits: int) -> None:
    from models import build

    proto = build(EMBEDDING, {"table": (50, 4), "w": (4, 3)})
    model = ir.from_proto(proto)
    ids = np.array([[0, 7, 49, 3, 7]], np.int64)
    (layer, _) = quantizable_layers(model.graph)
    predicted = stored_bytes(layer, layer_plan(layer, bits, 32))
    table = layer.weight_array()
    annotations.BITS.set(layer.node, {"w": bits, "a": 32})
    PassManager(build_pipeline("lower-qdq", CompileContext()))(model)
    lowered = ir.to_proto(model)
    import onnxruntime as ort

    from mpqc.passes.lib.grid import fake_quant_weight

    session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = session.run(["e"], {"ids": ids})[0]
    np.testing.assert_array_equal(rows, fake_quant_weight(table, bits, 0)[ids])
    dequantized = [n for n in lowered.graph.node if n.op_type == "DequantizeLinear"]
    table_dq = [n for n in dequantized if n.input[0] in {i.name for i in lowered.graph.initializer}]
    assert (not table_dq) == (bits == 8)  # 8-bit tables are never dequantized whole
    written = sum(
        v.const_value.nbytes for name, v in model.graph.initializers.items() if name not in ("w",)
    )
    assert written <= predicted <= written + 16
