"""canonicalize and its steps: one form for every exported model, numbers unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from models import conv_bn, exporter_quirks, random_inputs, run_ort, small_cnn

from mpqc import passes
from mpqc.ir import annotations as A


def _canonicalize(model: ir.Model, **options: object) -> ir.passes.PassResult:
    return passes.get("canonicalize")(**options)(model)


def test_batchnorm_folds_into_conv_with_the_same_outputs() -> None:
    model = conv_bn()
    feeds = random_inputs(model, 1, batch=2)[0]
    before = run_ort(model, feeds)[0]
    result = _canonicalize(model)
    assert result.modified
    assert [n.op_type for n in model.graph] == ["Conv", "Relu"]
    after = run_ort(model, feeds)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert model.graph.outputs[0].name == "y"


def test_batchnorm_folding_can_be_turned_off() -> None:
    model = conv_bn()
    _canonicalize(model, fold_batchnorm=False)
    assert "BatchNormalization" in {n.op_type for n in model.graph}


def test_batchnorm_that_is_a_graph_output_keeps_its_name() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[1,3,4,4] x) => (float[1,4,4,4] n) {
      c = Conv (x, w)
      n = BatchNormalization (c, gamma, beta, mean, var)
    }
    """
    from models import build

    var = np.full(4, 2.0, np.float32)
    model = ir.from_proto(
        build(text, {"w": (4, 3, 1, 1), "gamma": (4,), "beta": (4,), "mean": (4,)}, 0, {"var": var})
    )
    feeds = random_inputs(model, 1)[0]
    before = run_ort(model, feeds)[0]
    passes.get("fold-batchnorm")()(model)
    assert [n.op_type for n in model.graph] == ["Conv"] and model.graph.outputs[0].name == "n"
    np.testing.assert_allclose(run_ort(model, feeds)[0], before, rtol=1e-5, atol=1e-5)


def test_constant_weights_become_initializers_and_weight_arithmetic_is_folded() -> None:
    model = exporter_quirks()
    feeds = random_inputs(model, 1, batch=3)[0]
    before = run_ort(model, feeds)[0]
    _canonicalize(model)
    ops = [n.op_type for n in model.graph]
    assert ops == ["Conv", "GlobalAveragePool", "Flatten", "MatMul"]
    conv, *_, matmul = model.graph
    assert conv.inputs[1].is_initializer()
    folded = matmul.inputs[1]
    assert folded.is_initializer()
    np.testing.assert_array_equal(folded.const_value.numpy(), model_weight_transposed())
    np.testing.assert_allclose(run_ort(model, feeds)[0], before, rtol=1e-6, atol=1e-6)


def model_weight_transposed() -> np.ndarray:
    return exporter_quirks().graph.initializers["wk"].const_value.numpy().T


def test_dead_code_is_removed() -> None:
    model = exporter_quirks()
    _canonicalize(model, fold_constants=False)
    assert "Mul" not in {n.op_type for n in model.graph} and "Relu" not in {
        n.op_type for n in model.graph
    }


def test_shapes_are_inferred() -> None:
    model = small_cnn()
    for node in model.graph:
        for value in node.outputs:
            if not value.is_graph_output():
                value.shape = None
                value.type = None
    _canonicalize(model)
    shapes = {v.name: (v.dtype, list(v.shape)) for n in model.graph for v in n.outputs}
    assert shapes["c2"][1][1:] == [16, 4, 4]
    assert shapes["f"][1][1:] == [16]
    assert all(dtype == ir.DataType.FLOAT for dtype, _ in shapes.values())


def test_canonicalize_keeps_calibration_ranges_and_drops_stale_analyses() -> None:
    model = conv_bn()
    A.CALIB_RANGE.set(model.graph.inputs[0], {"min": -1, "max": 1, "lo": -1, "hi": 1})
    A.sensitivity_key("entropy").set(next(iter(model.graph)), {"w8a8": 0.1})
    _canonicalize(model)
    assert A.present_keys(model) == {"mpqc.calib.range"}


def test_canonical_model_is_valid_and_idempotent() -> None:
    model = exporter_quirks()
    _canonicalize(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    from mpqc.ir import dump

    once = dump(model)
    _canonicalize(model)
    assert dump(model) == once
    assert not passes.get("fold-constants")()(model).modified
    assert not passes.get("fold-batchnorm")()(model).modified


def test_fold_constants_respects_max_bytes() -> None:
    model = exporter_quirks()
    passes.get("fold-constants")(max_bytes=8)(model)
    assert "Transpose" in {n.op_type for n in model.graph}


def test_batchnorm_is_not_folded_when_the_conv_output_is_a_model_output() -> None:
    from models import build

    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[1,3,4,4] x) => (float[1,4,4,4] c, float[1,4,4,4] n) {
      c = Conv (x, w)
      n = BatchNormalization (c, gamma, beta, mean, var)
    }
    """
    var = np.full(4, 2.0, np.float32)
    model = ir.from_proto(
        build(text, {"w": (4, 3, 1, 1), "gamma": (4,), "beta": (4,), "mean": (4,)}, 0, {"var": var})
    )
    feeds = random_inputs(model, 1)[0]
    before = run_ort(model, feeds)
    _canonicalize(model)
    for old, new in zip(before, run_ort(model, feeds), strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)
    assert [v.name for v in model.graph.outputs] == ["c", "n"]


def test_an_identity_between_two_graph_outputs_keeps_both_names() -> None:
    # Found by the random-graph property test: onnx_ir's identity elimination renamed v0 to v2.
    model = ir.from_proto(
        onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] v0, float[2,3] v2) {
      v0 = Add(x, x)
      v2 = Identity(v0)
    }""")
    )
    passes.get("canonicalize")()(model)
    assert [v.name for v in model.graph.outputs] == ["v0", "v2"]


IF_RETURNING_AN_OUTER_VALUE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) {
  a = Relu(x)
  y = If (c) <
    then_branch = then_g () => (float[2] t) { t = Identity(a) },
    else_branch = else_g () => (float[2] e) { e = Neg(a) }
  >
}
"""


def test_an_identity_returning_an_outer_scope_value_from_a_branch_stays() -> None:
    # Without it the branch returns the outer value directly, which onnxruntime refuses, and
    # the outer value was renamed after the branch output.
    proto = onnx.parser.parse_model(IF_RETURNING_AN_OUTER_VALUE)
    model = ir.from_proto(proto)
    _canonicalize(model)
    canonical = ir.to_proto(model)
    onnx.checker.check_model(canonical, full_check=True)
    session = ort.InferenceSession(canonical.SerializeToString())
    x = np.array([-1.0, 2.0], np.float32)
    for cond, expected in ((True, [0.0, 2.0]), (False, [0.0, -2.0])):
        (y,) = session.run(None, {"x": x, "c": np.array(cond)})
        np.testing.assert_array_equal(y, expected)
    assert [n.op_type for n in model.graph] == ["Relu", "If"]
    assert model.graph.node(0).outputs[0].name == "a"


SEQUENCES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x, float[2,3] y, int64 at) => (float[2,3] out) {
  seq = SequenceConstruct(x, y)
  out = SequenceAt(seq, at)
}
"""


def test_a_sequence_stays_a_sequence_through_shape_inference() -> None:
    # onnx_ir 1.1's shape inference merges a sequence's element type as the value's own type, and
    # onnxruntime refuses a seq(tensor(float)) typed tensor(float).
    model = ir.from_proto(onnx.parser.parse_model(SEQUENCES))
    _canonicalize(model)
    assert model.graph.node(0).outputs[0].type is None or isinstance(
        model.graph.node(0).outputs[0].type, ir.SequenceType
    )
    proto = ir.to_proto(model)
    x, y = np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)
    session = ort.InferenceSession(proto.SerializeToString())
    (out,) = session.run(None, {"x": x, "y": y, "at": np.array(1, np.int64)})
    np.testing.assert_array_equal(out, y)


OPSET6_ADD = """
<ir_version: 3, opset_import: ["" : 6]>
g (float[2,3] x, float[3] b) => (float[2,3] y) {
  s = Add <broadcast=1> (x, b)
  y = Relu(s)
}
"""


def test_a_model_older_than_onnxruntime_is_upgraded_to_opset_7() -> None:
    # onnxruntime has no kernel older than opset 7 (Add-6 with its broadcast attribute, say).
    proto = onnx.parser.parse_model(OPSET6_ADD)
    b = np.array([1.0, -2.0, 3.0], np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(b, "b"))
    model = ir.from_proto(proto)
    _canonicalize(model)
    assert model.opset_imports[""] == 7
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 3
    (y,) = ort.InferenceSession(ir.to_proto(model).SerializeToString()).run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x + b, 0))


OPSET6_PRELU = """
<ir_version: 3, opset_import: ["" : 6]>
g (float[2,3,4] x, float[3] slope) => (float[2,3,4] y) { y = PRelu(x, slope) }
"""


def test_an_opset6_prelu_keeps_one_slope_per_channel() -> None:
    # Before opset 7 a 1-D slope holds one value per channel (axis 1); from opset 7 it broadcasts
    # from the last axis, and onnx's version converter keeps it as it is.
    proto = onnx.parser.parse_model(OPSET6_PRELU)
    slope = np.array([0.5, 0.25, 2.0], np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(slope, "slope"))
    model = ir.from_proto(proto)
    _canonicalize(model)
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    (y,) = ort.InferenceSession(ir.to_proto(model).SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(y, np.where(x > 0, x, x * slope[None, :, None]), rtol=1e-6)
