"""Weight layouts of lower-qdq: weight-only MatMulNBits, per-block weights along K, RNN recurrence
weights, layers inside If/Loop/Scan bodies, and what stays float (with its reason in the report).

Every mode is checked the same way: onnx.checker (full), an onnxruntime run, the configurable
evaluator's outputs against the lowered model's (tolerance 1e-5 of the output's range; in practice
identical), and the size footprint against the tensors written.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import build, random_inputs, run_ort

from mpqc.ir import annotations as A
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, PassManager, build_pipeline
from mpqc.passes.lib.evaluator import Evaluator
from mpqc.passes.lib.grid import fake_quant_weight, quantize_weight_blocked
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.lib.matmul_nbits import pack_matmul_nbits
from mpqc.passes.lib.plan import layer_plan, stored_bytes

TRANSFORMER = """
<ir_version: 10, opset_import: ["" : 17]>
block (float[N,5,64] x) => (float[N,5,48] y, float[N,5,6] z) {
  h = MatMul(x, w1)
  a = Add(h, b1)
  r = Relu(a)
  y = MatMul(r, w2)
  z = MatMul(y, w3)
}
"""


def _transformer() -> onnx.ModelProto:
    return build(TRANSFORMER, {"w1": (64, 96), "b1": (96,), "w2": (96, 48), "w3": (48, 6)})


GEMM = """
<ir_version: 10, opset_import: ["" : 17]>
gemm (float[N,80] x) => (float[N,6] y) {
  h = Gemm <transB=1> (x, w1, b1)
  r = Relu(h)
  y = Gemm (r, w2, b2)
}
"""


def _calibrated(
    proto: onnx.ModelProto, samples: list[dict[str, np.ndarray]]
) -> tuple[ir.Model, CompileContext]:
    model = ir.from_proto(proto)
    context = CompileContext(calibration=CalibrationData(tuple(samples)))
    PassManager(build_pipeline("canonicalize,calibrate", context))(model)
    return model, context


def _written(model: ir.Model) -> int:
    graphs = (model.graph, *model.graph.subgraphs())
    return sum(
        v.const_value.nbytes
        for g in graphs
        for v in g.initializers.values()
        if v.const_value is not None
    )


def _lower_and_check(
    proto: onnx.ModelProto,
    wbits: int,
    abits: int,
    layout: WeightLayout,
    samples: list[dict[str, np.ndarray]] | None = None,
    **extra: object,
) -> ir.Model:
    """Lower ``proto`` uniformly and check checker, evaluator == lowered model, footprint == written
    bytes."""
    samples = samples or random_inputs(proto, 3, batch=2)
    model, context = _calibrated(proto, samples)
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
    predicted = fixed + sum(
        stored_bytes(layer, layer_plan(layer, wbits, abits, layout=layout)) for layer in layers
    )
    evaluator = Evaluator(model, samples, wbits=(wbits,), layout=layout)
    expected = evaluator.run({layer.name: (wbits, abits) for layer in layers})
    options = {
        "uniform": f"w{wbits}a{abits}",
        "weight_only": layout.weight_only,
        "block_size": layout.block_size,
        "accuracy_level": layout.accuracy_level,
        **extra,
    }
    _lower_pass(context, options)(model)
    proto_out = ir.to_proto(model)
    onnx.checker.check_model(proto_out, full_check=True)
    for sample, want in zip(samples, expected, strict=True):
        for got, w in zip(run_ort(proto_out, sample, "basic"), want, strict=True):
            assert np.abs(got - w).max() <= 1e-5 * np.abs(w).max()
    assert _written(model) <= predicted <= _written(model) + 16
    return model


def _lower_pass(context: CompileContext, options: dict[str, object]):
    from mpqc.passes import get

    return get("lower-qdq")(context=context, **options)


# --- weight-only: MatMulNBits ---------------------------------------------------------------------


def test_packing_follows_onnxruntimes_layout() -> None:
    weight = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    packed, scales, width = pack_matmul_nbits(weight, 4, 32)
    assert (packed.shape, scales.shape, width) == ((3, 2, 16), (6,), 4)
    levels, block_scales = quantize_weight_blocked(weight, 4, 0, 32)
    # Column 0, block 0: the first two levels share the first byte, low nibble first, offset by 8.
    assert int(packed[0, 0, 0]) == (int(levels[0, 0]) + 8) | ((int(levels[1, 0]) + 8) << 4)
    assert packed[0, 1, 4] == 0x88  # K = 40 pads the last block with the zero point
    np.testing.assert_array_equal(scales.reshape(3, 2), block_scales.T)


@pytest.mark.parametrize("wbits", [2, 3, 4, 8])
@pytest.mark.parametrize("block", [0, 64])
def test_weight_only_matmuls_become_matmul_nbits(wbits: int, block: int) -> None:
    model = _lower_and_check(
        _transformer(), wbits, 32, WeightLayout(weight_only=True, block_size=block)
    )
    fused = [n for n in model.graph if n.op_type == "MatMulNBits"]
    assert [n.outputs[0].name for n in fused] == ["h", "y", "z"]  # the layers keep their names
    for node in fused:
        assert node.domain == "com.microsoft"
        assert node.attributes.get_int("bits") == {2: 2, 3: 4, 4: 4, 8: 8}[wbits]
        assert node.attributes.get_int("block_size") == (block or 32)
        assert node.attributes.get_int("accuracy_level") == 4
        assert A.BITS.get(node) == {"w": wbits, "a": 32}
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in model.graph}
    assert not {"w1", "w2", "w3"} & set(model.graph.initializers)


MIXED_KINDS = """
<ir_version: 10, opset_import: ["" : 17]>
kinds (float[N,64] x, float[N,8] v) => (float[N,32] y, float[N,4] g, float[N,4] k) {
  y = MatMul(x, w1)
  g = Gemm <transB=1> (x, w2, b2)
  k = MatMul(v, w3)
}
"""


@pytest.mark.parametrize("level", [1, 4])
def test_plain_gemms_become_matmul_nbits_with_their_bias(level: int) -> None:
    proto = build(MIXED_KINDS, {"w1": (64, 32), "w2": (4, 64), "b2": (4,), "w3": (8, 4)})
    model = _lower_and_check(proto, 4, 32, WeightLayout(weight_only=True, accuracy_level=level))
    fused = {n.outputs[0].name: n for n in model.graph if n.op_type == "MatMulNBits"}
    assert set(fused) == {"y", "g"}  # the K = 8 MatMul dequantizes per channel
    assert fused["g"].inputs[5].name == "b2" and fused["g"].attributes.get_int("K") == 64
    ops = [n.op_type for n in model.graph]
    assert ops.count("DequantizeLinear") == 1 and "QuantizeLinear" not in ops


GEMMS = """
<ir_version: 10, opset_import: ["" : 17]>
gemms (float[N,32] x) => (float[N,8] a, float[N,8] b, float[N,8] c) {
  a = Gemm <alpha = 0.5> (x, w1, b1)
  b = Gemm <transB = 1> (x, w2, b2row)
  c = Gemm (x, w3)
}
"""


def test_other_gemms_dequantize_per_channel_in_weight_only_mode() -> None:
    proto = build(
        GEMMS,
        {"w1": (32, 8), "b1": (8,), "w2": (8, 32), "w3": (32, 8)},
        arrays={"b2row": np.ones((1, 8), np.float32)},
    )
    model = _lower_and_check(proto, 4, 32, WeightLayout(weight_only=True))
    kinds = {
        n.outputs[0].name: n.op_type for n in model.graph if n.outputs[0].name in ("a", "b", "c")
    }
    assert kinds == {
        "a": "Gemm",
        "b": "MatMulNBits",
        "c": "MatMulNBits",
    }  # alpha != 1 has no MatMulNBits form
    assert "b1" in model.graph.initializers  # float activations: the bias stays float


@pytest.mark.parametrize("level", [1, 4])
def test_weight_only_runs_identically_with_onnxruntime_optimizations(level: int) -> None:
    """MatMulNBits computes the same numbers whatever onnxruntime fuses around it."""
    proto = _transformer()
    model = _lower_and_check(proto, 4, 32, WeightLayout(weight_only=True, accuracy_level=level))
    sample = random_inputs(proto, 1, batch=2)[0]
    for got, want in zip(
        run_ort(model, sample, "all"), run_ort(model, sample, "basic"), strict=True
    ):
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_weight_only_overrides_activation_bits() -> None:
    model = _lower_and_check(_transformer(), 4, 8, WeightLayout(weight_only=True))
    assert "QuantizeLinear" not in {n.op_type for n in model.graph}
    assert {A.BITS.get(n)["a"] for n in model.graph if A.BITS.has(n)} == {32}


@pytest.mark.parametrize("wbits", [4, 8, 2])
def test_accuracy_level_4_rounds_activations_as_the_evaluator_does(wbits: int) -> None:
    """Level 4 quantizes A to int8 per block of K inside the kernel; the evaluator simulates it."""
    proto = build(
        MIXED_KINDS.replace("float[N,64] x", "float[N,80] x"),
        {"w1": (80, 32), "w2": (4, 80), "b2": (4,), "w3": (8, 4)},
    )
    model = _lower_and_check(proto, wbits, 32, WeightLayout(weight_only=True, accuracy_level=4))
    assert {
        n.attributes.get_int("accuracy_level") for n in model.graph if n.op_type == "MatMulNBits"
    } == {4}


def test_accuracy_levels_other_than_1_and_4_are_refused() -> None:
    with pytest.raises(ValueError, match="must be 1 .* or 4"):
        _lower_pass(CompileContext(), {"weight_only": True, "accuracy_level": 2})


EMBEDDING = """
<ir_version: 10, opset_import: ["" : 17]>
embed (int64[N,7] ids) => (float[N,7,32] y) {
  e = Gather(table, ids)
  y = MatMul(e, w)
}
"""


@pytest.mark.parametrize(
    ("wbits", "lookup"), [(4, "GatherBlockQuantized"), (3, "GatherBlockQuantized"), (8, "Gather")]
)
def test_weight_only_tables_gather_only_the_rows_they_need(wbits: int, lookup: str) -> None:
    proto = build(EMBEDDING, {"table": (100, 64), "w": (64, 32)})
    rng = np.random.default_rng(0)
    samples = [{"ids": rng.integers(0, 100, (2, 7))} for _ in range(3)]
    model = _lower_and_check(proto, wbits, 32, WeightLayout(weight_only=True), samples)
    ops = [n.op_type for n in model.graph]
    assert ops[0] == lookup and "MatMulNBits" in ops
    assert model.opset_imports[""] == 17  # contrib ops and 8-bit tables need no opset upgrade
    assert not any(
        n.op_type == "DequantizeLinear" and n.inputs[0].is_initializer() for n in model.graph
    )  # no whole-table DQ
    if lookup == "GatherBlockQuantized":
        assert model.graph.initializers[f"table.w{wbits}"].dtype == ir.DataType.INT4


# --- per-block weights in the QDQ path ------------------------------------------------------------


@pytest.mark.parametrize(("wbits", "abits"), [(4, 8), (2, 8), (3, 6), (4, 32)])
def test_blocked_weights_along_k(wbits: int, abits: int) -> None:
    model = _lower_and_check(
        build(GEMM, {"w1": (16, 80), "b1": (16,), "w2": (16, 6), "b2": (6,)}),
        wbits,
        abits,
        WeightLayout(block_size=16),
    )
    assert model.opset_imports[""] >= 21
    blocked = [
        n
        for n in model.graph
        if n.op_type == "DequantizeLinear" and n.attributes.get_int("block_size", 0)
    ]
    assert [(n.attributes.get_int("axis"), n.inputs[1].shape.numpy()) for n in blocked] == [
        (1, (16, 5)),
        (0, (1, 6)),
    ]
    # Blocked weights have no scale per channel to put an int32 bias on: biases stay float.
    assert {"b1", "b2"} <= set(model.graph.initializers)


def test_eight_bit_weights_stay_per_channel_when_blocks_are_asked() -> None:
    model = _lower_and_check(
        build(GEMM, {"w1": (16, 80), "b1": (16,), "w2": (16, 6), "b2": (6,)}),
        8,
        8,
        WeightLayout(block_size=16),
    )
    assert not any(
        n.attributes.get_int("block_size", 0)
        for n in model.graph
        if n.op_type == "DequantizeLinear"
    )


def test_bad_block_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="power of two of at least 16"):
        WeightLayout(block_size=24)
    with pytest.raises(ValueError, match="power of two"):
        _lower_pass(CompileContext(), {"block_size": 8})


# --- recurrent layers -----------------------------------------------------------------------------

RNN = """
<ir_version: 10, opset_import: ["" : 17]>
rnn (float[5,2,8] x) => (float[5,1,2,6] y) {
  y = {op} <hidden_size=6> (x, w, r, b)
}
"""


@pytest.mark.parametrize(("op", "gates"), [("LSTM", 4), ("GRU", 3)])
@pytest.mark.parametrize(("wbits", "abits"), [(8, 8), (4, 32)])
def test_recurrence_weights_are_quantized_with_the_input_weights(
    op: str, gates: int, wbits: int, abits: int
) -> None:
    proto = build(
        RNN.replace("{op}", op),
        {"w": (1, gates * 6, 8), "r": (1, gates * 6, 6), "b": (1, 2 * gates * 6)},
    )
    (layer,) = quantizable_layers(ir.from_proto(proto).graph)
    assert layer.other_weight_indices == (2,)
    model = _lower_and_check(proto, wbits, abits, WeightLayout())
    stored = model.graph.initializers[f"r.w{wbits}"]
    assert stored.dtype == (ir.DataType.INT8 if wbits == 8 else ir.DataType.INT4)
    assert "r" not in model.graph.initializers and "b" in model.graph.initializers


# --- layers inside subgraph bodies
# -----------------------------------------------------------------

BODIES = """
<ir_version: 10, opset_import: ["" : 17]>
bodies (float[2,8] x, int64 n, bool go) => (float[2,8] y, float[2,4] z) {
  y = Loop (n, go, x) <body = step (int64 i, bool ci, float[2,8] h) => (bool co, float[2,8] ho) {
     co = Identity(ci)
     t = MatMul(h, wl)
     ho = Tanh(t)
  }>
  z = If (go) <
    then_branch = then_g () => (float[2,4] a) { a = Gemm <transB=1> (y, wt) },
    else_branch = else_g () => (float[2,4] b) { b = MatMul(y, we) }
  >
}
"""


def _bodies() -> onnx.ModelProto:
    return build(BODIES, {"wl": (8, 8), "wt": (4, 8), "we": (8, 4)})


def test_layers_in_bodies_are_found_with_their_host() -> None:
    graph = ir.from_proto(_bodies()).graph
    assert quantizable_layers(graph, subgraphs=False) == []
    found = [
        (layer.name, layer.node.op_type, layer.host.op_type, layer.in_subgraph)
        for layer in quantizable_layers(graph)
    ]
    assert found == [
        ("y/body/t", "MatMul", "Loop", True),
        ("z/then/a", "Gemm", "If", True),
        ("z/else/b", "MatMul", "If", True),
    ]


@pytest.mark.parametrize("wbits", [8, 4, 2])
def test_body_layers_lower_weights_only_inside_the_body_without_calibration(wbits: int) -> None:
    proto = _bodies()
    model = ir.from_proto(proto)
    _lower_pass(CompileContext(), {"uniform": f"w{wbits}a8"})(model)
    lowered = ir.to_proto(model)
    onnx.checker.check_model(lowered, full_check=True)
    loop_body = next(n for n in model.graph if n.op_type == "Loop").attributes["body"].value
    assert "QuantizeLinear" not in {
        n.op_type for g in (model.graph, *model.graph.subgraphs()) for n in g
    }
    assert any(n.op_type in ("DequantizeLinear", "Mul") for n in loop_body)
    assert not {"wl", "wt", "we"} & {
        name for g in (model.graph, *model.graph.subgraphs()) for name in g.initializers
    }

    weights = {
        name: onnx.numpy_helper.to_array(t)
        for name, t in ((t.name, t) for t in proto.graph.initializer)
    }
    wl, wt = fake_quant_weight(weights["wl"], wbits, 1), fake_quant_weight(weights["wt"], wbits, 0)
    feeds = {
        "x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32),
        "n": np.array(3),
        "go": np.array(True),
    }
    h = feeds["x"]
    for _ in range(3):
        h = np.tanh(h @ wl)
    # Executed as written: onnxruntime's default optimizations would fuse the body's
    # DequantizeLinear ->
    # MatMul at float activations into MatMulNBits at its accuracy level 4 (int8 activations).
    y, z = run_ort(lowered, feeds, "basic")
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, h @ wt.T, rtol=1e-5, atol=1e-5)
    assert _written(model) == sum(  # (no range: the inputs stay float)
        stored_bytes(layer, layer_plan(layer, wbits, 32))
        for layer in quantizable_layers(ir.from_proto(proto).graph)
    )


def test_weight_only_body_matmuls_become_matmul_nbits_inside_the_body() -> None:
    proto = build(
        BODIES.replace("float[2,8]", "float[2,32]"), {"wl": (32, 32), "wt": (4, 32), "we": (32, 4)}
    )
    model = ir.from_proto(proto)
    _lower_pass(CompileContext(), {"uniform": "w4a8", "weight_only": True, "accuracy_level": 1})(
        model
    )
    lowered = ir.to_proto(model)
    onnx.checker.check_model(lowered, full_check=True)
    loop_body = next(n for n in model.graph if n.op_type == "Loop").attributes["body"].value
    assert [n.op_type for n in loop_body] == ["Identity", "MatMulNBits", "Tanh"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    feeds = {
        "x": np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32),
        "n": np.array(3),
        "go": np.array(True),
    }
    h = feeds["x"]
    for _ in range(3):
        h = np.tanh(h @ fake_quant_weight(weights["wl"], 4, 1, 32, 0))
    y, z = run_ort(lowered, feeds, "basic")
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        z, h @ fake_quant_weight(weights["wt"], 4, 0).T, rtol=1e-5, atol=1e-5
    )


# --- what has no quantized form ------------------------------------------------------------------

POSITIONS = """
<ir_version: 10, opset_import: ["" : 17]>
positions (float[N,16,32] x) => (float[N,16,8] y) {
  p = Add(x, table)
  y = MatMul(p, w)
}
"""


def test_weighted_ops_without_a_quantized_form_are_reported() -> None:
    model = ir.from_proto(build(POSITIONS, {"table": (1, 16, 32), "w": (32, 8)}))
    _lower_pass(CompileContext(), {"uniform": "w8a32"})(model)
    (entry,) = A.REPORT.section(model, "lower-qdq")["left_float"]
    assert (
        entry["layer"] == "p"
        and "Add has no quantized form" in entry["reason"]
        and "512-element" in entry["reason"]
    )
    assert model.graph.initializers["table"].dtype == ir.DataType.FLOAT


def test_a_bit_width_the_spec_does_not_run_is_refused_with_its_list() -> None:
    import mpqc
    from mpqc import hwspecs
    from mpqc.passes import PassInputError

    with pytest.raises(
        PassInputError, match=r"x86_avx2 does not run 3-bit weights: it supports 2, 4, 8, 16"
    ):
        mpqc.compile(_transformer(), mpqc.CompileOptions(hw="x86_avx2", uniform="w3a8"))
    model = ir.from_proto(_transformer())
    A.BITS.set(
        next(n for n in model.graph if n.op_type == "MatMul"), {"w": 8, "a": 4}
    )  # edited by hand
    with pytest.raises(
        PassInputError,
        match=r"layer 'h': x86_avx2 does not run 4-bit activations: it supports 8, 16",
    ):
        _lower_pass(CompileContext(hw=hwspecs.load("x86_avx2")), {})(model)


def test_weight_only_conv_layers_keep_float_biases() -> None:
    from models import small_cnn

    model = _lower_and_check(ir.to_proto(small_cnn()), 4, 32, WeightLayout(weight_only=True))
    assert {"b1", "b2", "b3", "b4"} <= set(model.graph.initializers)
    assert "QuantizeLinear" not in {n.op_type for n in model.graph}


def test_one_layer_errors_follow_the_int8_blocks_too() -> None:
    """The evaluator's one-layer-at-a-time path (suffix sessions) sees the same level-4 rounding."""
    proto = _transformer()
    samples = random_inputs(proto, 3, batch=2)
    model, _ = _calibrated(proto, samples)
    evaluator = Evaluator(
        model, samples, wbits=(2, 4), layout=WeightLayout(weight_only=True, accuracy_level=4)
    )
    configs = [{name: (bits, 32)} for name in evaluator.layers for bits in (2, 4)]
    assert evaluator.errors(configs) == pytest.approx(
        [evaluator.error(config) for config in configs], rel=1e-6
    )


SCAN = """
<ir_version: 10, opset_import: ["" : 17]>
scanned (float[2,5,16] xs, int64[2,3] ids)
    => (float[2,16] last, float[2,5,16] ys, float[2,3,16] rows) {
  init = ReduceSum <keepdims = 0> (xs, axis)
  last, ys = Scan (init, xs) <num_scan_inputs = 1, scan_input_axes = [1], scan_output_axes = [1],
    body = step (float[2,16] h, float[2,16] x) => (float[2,16] h2, float[2,16] y) {
      w = Constant <value = float[16,16] {WEIGHTS}> ()
      s = Add(h, x)
      y = MatMul(s, w)
      h2 = Tanh(y)
    }>
  rows = If (flag) <
    then_branch = g () => (float[2,3,16] r) { r = Gather(table, ids) },
    else_branch = e () => (float[2,3,16] q) { q = Gather(table, ids) }
  >
}
"""


@pytest.mark.parametrize("wbits", [8, 4])
def test_constant_node_weights_and_tables_inside_bodies_are_quantized(wbits: int) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 16)).astype(np.float32)
    table = rng.standard_normal((20, 16)).astype(np.float32)
    text = SCAN.replace("{WEIGHTS}", "{" + ",".join(f"{v:.8e}" for v in weight.ravel()) + "}")
    proto = build(
        text, {}, arrays={"axis": np.array([1], np.int64), "table": table, "flag": np.array(True)}
    )
    model = ir.from_proto(proto)
    found = [
        (layer.name, layer.node.op_type, layer.host.op_type)
        for layer in quantizable_layers(model.graph)
    ]
    assert found == [
        ("last/body/y", "MatMul", "Scan"),
        ("rows/then/r", "Gather", "If"),
        ("rows/else/q", "Gather", "If"),
    ]
    _lower_pass(CompileContext(), {"uniform": f"w{wbits}a8"})(model)
    lowered = ir.to_proto(model)
    onnx.checker.check_model(lowered, full_check=True)
    body = next(n for n in model.graph if n.op_type == "Scan").attributes["body"].value
    assert "Constant" not in {n.op_type for n in body}  # the float weight is gone
    weight_q = fake_quant_weight(weight, wbits, 1)
    feeds = {
        "xs": rng.standard_normal((2, 5, 16)).astype(np.float32),
        "ids": np.array([[0, 5, 19], [3, 3, 7]]),
    }
    h = feeds["xs"].sum(axis=1)
    ys = []
    for step in range(5):
        y = (h + feeds["xs"][:, step]) @ weight_q
        ys.append(y)
        h = np.tanh(y)
    last, got_ys, rows = run_ort(lowered, feeds, "basic")
    np.testing.assert_allclose(got_ys, np.stack(ys, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rows, fake_quant_weight(table, wbits, 0)[feeds["ids"]])


# --- the front door ------------------------------------------------------------------------------


def test_compile_and_the_command_line_lower_weight_only(tmp_path) -> None:
    import mpqc
    from mpqc.cli import main
    from mpqc.passes import PassInputError

    proto = _transformer()
    result = mpqc.compile(
        proto, mpqc.CompileOptions(hw="x86_avx2", weight_only=True, block_size=64)
    )
    assert "lower-qdq{uniform=w4a32,weight_only=true,block_size=64}" in result.pipeline
    assert [n.op_type for n in result.model.graph.node] == [
        "MatMulNBits",
        "Add",
        "Relu",
        "MatMulNBits",
        "MatMulNBits",
    ]
    onnx.checker.check_model(result.model, full_check=True)
    with pytest.raises(PassInputError, match="^weight_only: .* drop the budgets"):
        mpqc.compile(proto, mpqc.CompileOptions(hw="x86_avx2", weight_only=True, max_size="0.5x"))

    source, output = tmp_path / "block.onnx", tmp_path / "block.w8.onnx"
    onnx.save(proto, source)
    assert (
        main(
            [
                str(source),
                "--hw",
                "x86_avx2",
                "-o",
                str(output),
                "--weight-only",
                "--uniform",
                "w8a8",
                "-q",
            ]
        )
        == 0
    )
    fused = [n for n in onnx.load(output).graph.node if n.op_type == "MatMulNBits"]
    assert [next(a.i for a in n.attribute if a.name == "bits") for n in fused] == [8, 8, 8]


@pytest.mark.parametrize(("bits", "max_drop"), [("w8a32", 0.005), ("w4a32", 0.05)])
def test_weight_only_keeps_the_digits_models_accuracy(bits: str, max_drop: float, tmp_path) -> None:
    import mpqc
    from mpqc import examples

    result = mpqc.compile(
        str(examples.digits_model_path()),
        mpqc.CompileOptions(hw="x86_avx2", weight_only=True, uniform=bits),
    )
    path = mpqc.save(result.ir_model, tmp_path / "digits.onnx")
    assert (
        examples.digits_accuracy(str(path))
        >= examples.digits_accuracy(str(examples.digits_model_path())) - max_drop
    )
