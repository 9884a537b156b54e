"""The cost pass reads each layer's surroundings off the graph, the way onnxruntime will run the
lowered model."""

from __future__ import annotations

import onnx
import onnx.parser
import pytest

from mpqc import hwspecs
from mpqc import ir as mir
from mpqc.ir import annotations
from mpqc.passes import CompileContext
from mpqc.passes.analysis.cost import _Neighbourhood
from mpqc.passes.lib.describe import static_shapes
from mpqc.pipeline import Pipeline

NET = """
<ir_version: 8, opset_import: ["" : 14]>
net (float[1, 8, 16, 16] x) => (float[1, 8, 8, 8] y) {
    a = Conv (x, w1)
    ar = Relu (a)
    p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (ar)
    b = Conv (p, w2)
    bh = HardSwish (b)
    c = Conv (bh, w3)
    y = Add (c, c)
}
"""


def model() -> onnx.ModelProto:
    proto = onnx.parser.parse_model(NET)
    for name in ("w1", "w2", "w3"):
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(
                    onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT, [8, 8, 1, 1], [0.1] * 64)
                ),
                name,
            )
        )
    return proto


def described() -> dict[str, object]:
    spec = hwspecs.load("x86_avx2")
    ir_model = mir.load(model())
    layers = mir.quantizable_layers(ir_model.graph)
    neighbourhood = _Neighbourhood(layers, spec)
    shapes = static_shapes(ir_model, CompileContext(hw=spec))
    return {desc.name: desc for desc in (neighbourhood.describe(layer, shapes) for layer in layers)}


def test_neighbourhood_of_each_layer() -> None:
    first, second, third = described().values()
    assert first.epilogue == ("Relu",) and not first.input_from_layer and first.output_to_layers
    assert second.input_ops == ("MaxPool",) and second.input_from_layer, (
        "uint8 flows through the MaxPool"
    )
    assert second.epilogue == ("HardSwish",) and not second.output_to_layers, (
        "HardSwish stays float"
    )
    assert not third.input_from_layer and not third.output_to_layers, (
        "the Add and the graph output read it"
    )


def test_fixed_part_has_the_call_and_the_other_ops_but_not_the_priced_activations() -> None:
    spec = hwspecs.load("x86_avx2")
    ir_model = mir.load(model())
    Pipeline("cost", CompileContext(hw=spec, wbits=(8, 4), abits=(8,))).run_ir(ir_model)
    fixed = annotations.MODEL_COST.get(ir_model)["fixed"]["latency_s"]
    others = spec.overhead("MaxPool").time(8 * 8 * 8) + spec.overhead("Add").time(8 * 8 * 8)
    assert fixed == pytest.approx(
        spec.session_overhead + others, rel=1e-5
    )  # annotations keep 6 digits


ATTENTION = """
<ir_version: 8, opset_import: ["" : 17]>
attention (float[1, 16, 32] x) => (float[1, 16, 32] y) {
    q = MatMul (x, wq)
    t = Transpose <perm = [0, 2, 1]> (x)
    s = MatMul (q, t)
    p = Softmax (s)
    y = MatMul (p, x)
}
"""


def test_a_matmul_of_two_computed_tensors_costs_its_multiply_accumulates() -> None:
    """Attention's scores and weighted sum are MatMuls no search changes: the fixed part prices
    their MACs at the float rate, and Softmax at the spec's own per-element cost."""
    proto = onnx.parser.parse_model(ATTENTION)
    proto.graph.initializer.append(
        onnx.numpy_helper.from_array(
            onnx.numpy_helper.to_array(
                onnx.helper.make_tensor("wq", onnx.TensorProto.FLOAT, [32, 32], [0.01] * 1024)
            ),
            "wq",
        )
    )
    spec = hwspecs.load("x86_avx2")
    ir_model = mir.load(proto)
    Pipeline("cost", CompileContext(hw=spec, wbits=(8,), abits=(8,))).run_ir(ir_model)
    fixed = annotations.MODEL_COST.get(ir_model)["fixed"]["latency_s"]
    rate = spec.precision(None, None).throughput
    scores, weighted = 16 * 16, 16 * 32  # output elements, each 32 and 16 MACs
    assert spec.overhead("Softmax").per_element > spec.overhead("Add").per_element
    assert fixed == pytest.approx(
        spec.session_overhead
        + spec.overhead("Transpose").time(32 * 16)
        + spec.overhead("MatMul").time(scores)
        + scores * 32 / rate
        + spec.overhead("Softmax").time(scores)
        + spec.overhead("MatMul").time(weighted)
        + weighted * 16 / rate,
        rel=1e-5,
    )


RECURRENT = """
<ir_version: 8, opset_import: ["" : 17]>
recurrent (float[20, 1, 128] x) => (float[20, 2, 1, 128] y) {
    y = LSTM <hidden_size = 128, direction = "bidirectional"> (x, w, r)
}
"""


def test_an_lstm_is_offered_dynamic_quantize_lstm_priced_as_what_runs() -> None:
    """On onnxruntime's CPU specs an LSTM's w8adyn candidate is DynamicQuantizeLSTM: the cheapest
    in time, while w8a8 (the float LSTM behind DequantizeLinear) costs more than float."""
    proto = onnx.parser.parse_model(RECURRENT)
    for name, shape in (("w", [2, 512, 128]), ("r", [2, 512, 128])):
        array = onnx.numpy_helper.to_array(
            onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT, shape, [0.01] * (2 * 512 * 128))
        )
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    ir_model = mir.load(proto)
    context = CompileContext(hw=hwspecs.load("x86_avx512_vnni"), wbits=(8,), abits=(8,))
    Pipeline("cost", context).run_ir(ir_model)
    (layer,) = mir.quantizable_layers(ir_model.graph)
    table = annotations.COST.get(layer.node)
    latency = {key: entry["latency_s"] for key, entry in table.items()}
    assert latency["w8adyn"] < latency["float"] < latency["w8a8"]
    assert table["w8adyn"]["size"] < table["float"]["size"] / 3
