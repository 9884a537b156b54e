"""The lowering plan's four-way agreement: lowering, size, evaluator and cost read one plan.

For every layout — per channel at 8/4/3/2 bits, 16-bit, per block, weight-only MatMulNBits at
2/4/8 bits and both accuracy levels, GatherBlockQuantized and int8-row tables, LSTM/GRU, Conv/Gemm/
MatMul with and without bias, activations u8, u16, dynamic u8 (MatMulInteger, DynamicQuantizeLSTM)
and none — a model
is lowered uniformly and:

1. the file: every layer's written form is the plan's (weight container, scale form, int32 or float
   bias, input and output quantizers);
2. the bytes: the tensors written equal the plan's byte sum exactly (the models are built so that no
   quantizer is shared between layers, the one place where the per-layer sum is an upper bound);
3. the numbers: the evaluator's simulation equals the lowered model run in onnxruntime, executed as
   written (tolerance 1e-5 of the output's range), and also with onnxruntime's optimizations where
   the kernel it fuses computes the graph's numbers (dynamic ranges: DynamicQuantizeMatMul; the
   evaluator runs DynamicQuantizeLSTM itself);
4. the kernel: the kernel the plan names is the one onnxruntime runs after its own fusions, and the
   one the cost pass prices (the spec's kernel kind for the pair ``priced_pair`` gives).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import build, random_inputs, run_ort

from mpqc import hwspecs
from mpqc.core.bits import Bits
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, PassManager, build_pipeline, get
from mpqc.passes.analysis.cost import priced_kernel, priced_pair
from mpqc.passes.lib.describe import describe, static_shapes
from mpqc.passes.lib.evaluator import Evaluator
from mpqc.passes.lib.fusion import OptimizedGraph, optimized_graph
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.lib.plan import (
    BiasForm,
    Kernel,
    LayerPlan,
    WeightForm,
    int32_bias,
    layer_plan,
    stored_bytes,
)

# Each layer reads its own tensor, and each integer kernel's output target (after a single Relu)
# is read by a non-layer op: no quantizer is shared, so the per-layer byte sum is exact.
CONVS = """
<ir_version: 10, opset_import: ["" : 17]>
convs (float[N,3,8,8] x) => (float[N,10] y) {
  c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)
  r1 = Relu(c1)
  s1 = Sigmoid(r1)
  c2 = Conv <pads=[1,1,1,1], strides=[2,2]> (s1, w2)
  t2 = Tanh(c2)
  p = GlobalAveragePool(t2)
  f = Flatten(p)
  g = Gemm <transB=1> (f, w3, b3)
  y = Sigmoid(g)
}
"""
CONVS_WEIGHTS = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (16, 8, 3, 3), "w3": (10, 16), "b3": (10,)}

MATMULS = """
<ir_version: 10, opset_import: ["" : 17]>
matmuls (float[N,5,64] x) => (float[N,5,48] y) {
  h = MatMul(x, w1)
  a = Add(h, b1)
  t = Tanh(a)
  m = MatMul(t, w2)
  y = Sigmoid(m)
}
"""

GEMMS = """
<ir_version: 10, opset_import: ["" : 17]>
gemms (float[N,64] x) => (float[N,8] y) {
  h = Gemm (x, w1, b1)
  t = Tanh(h)
  g = Gemm <transB=1> (t, w2)
  y = Sigmoid(g)
}
"""

# Two layers reading one tensor: at a dynamic range they share its DynamicQuantizeLinear (no bytes)
SHARED = """
<ir_version: 10, opset_import: ["" : 17]>
shared (float[N,5,64] x) => (float[N,5,48] y) {
  q = MatMul(x, w1)
  k = MatMul(x, w2)
  s = Add(q, k)
  y = Sigmoid(s)
}
"""

TABLE = """
<ir_version: 10, opset_import: ["" : 17]>
table (int64[N,7] ids) => (float[N,7,24] y) {
  e = Gather(table, ids)
  t = Tanh(e)
  m = MatMul(t, w)
  y = Sigmoid(m)
}
"""

RNN = """
<ir_version: 10, opset_import: ["" : 17]>
rnn (float[5,2,8] x) => (float[5,1,2,6] y) {
  h = {op} <hidden_size=6> (x, w, r, b)
  y = Sigmoid(h)
}
"""

# Bidirectional, its last hidden state read too: DynamicQuantizeLSTM computes every output.
BIDIRECTIONAL = """
<ir_version: 10, opset_import: ["" : 17]>
bidirectional (float[7,1,8] x) => (float[7,2,1,6] y, float[2,1,6] last) {
  h, state = LSTM <hidden_size=6, direction="bidirectional"> (x, w, r, b)
  y = Sigmoid(h)
  last = Tanh(state)
}
"""


def _convs() -> onnx.ModelProto:
    return build(CONVS, CONVS_WEIGHTS)


def _matmuls() -> onnx.ModelProto:
    return build(MATMULS, {"w1": (64, 96), "b1": (96,), "w2": (96, 48)})


def _gemms() -> onnx.ModelProto:
    return build(GEMMS, {"w1": (64, 32), "b1": (32,), "w2": (8, 32)})


def _shared() -> onnx.ModelProto:
    return build(SHARED, {"w1": (64, 48), "w2": (64, 48)})


def _table() -> onnx.ModelProto:
    return build(TABLE, {"table": (50, 32), "w": (32, 24)})


def _bidirectional() -> onnx.ModelProto:
    return build(BIDIRECTIONAL, {"w": (2, 24, 8), "r": (2, 24, 6), "b": (2, 48)})


def _rnn(op: str) -> onnx.ModelProto:
    gates = {"LSTM": 4, "GRU": 3}[op]
    return build(
        RNN.replace("{op}", op),
        {"w": (1, gates * 6, 8), "r": (1, gates * 6, 6), "b": (1, 2 * gates * 6)},
    )


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    wbits: int
    abits: int
    layout: WeightLayout = WeightLayout()
    spec: str = "x86_avx512_vnni"
    dynamic: bool = False

    @property
    def bits(self) -> Bits:
        return Bits(self.wbits, self.abits, self.dynamic)

    @property
    def id(self) -> str:
        options = dataclasses.asdict(self.layout)
        changed = [f"{k}={v}" for k, v in options.items() if v != getattr(WeightLayout(), k)]
        return "-".join([self.model, str(self.bits), *changed, self.spec])


_WEIGHT_ONLY = WeightLayout(weight_only=True)
CASES = [
    # per channel (integer kernels at 8 bits, a narrowed grid on AVX2), narrow 3-bit, unit-scale
    # 2-bit; float weights behind a quantized input
    *(Case("convs", w, 8) for w in (8, 4, 2)),
    Case("convs", 3, 8, spec="generic"),
    Case("convs", 8, 8, spec="x86_avx2"),
    Case("convs", 4, 8, spec="arm_a72"),
    Case("convs", 32, 8),
    # 16-bit activations and weights: no integer kernel, an int32 bias at a widened scale
    Case("convs", 8, 16),
    Case("convs", 16, 16),
    # ... into a MatMul/Gemm: onnxruntime turns the int8 weight's DequantizeLinear -> MatMul into
    # MatMulNBits, which rounds the 16-bit input to int8 per block of 32 again
    Case("matmuls", 8, 16),
    Case("gemms", 8, 16),
    # weights only, per channel
    Case("convs", 4, 32, _WEIGHT_ONLY),
    Case("gemms", 8, 8),
    Case("gemms", 4, 8),
    Case("matmuls", 8, 8),
    Case("matmuls", 4, 8),
    *(Case("matmuls", w, 32) for w in (8, 4, 2)),
    Case("matmuls", 4, 32, WeightLayout(block_size=32)),
    Case("gemms", 8, 32),
    # sub-8-bit MatMul/Gemm weights in mixed mode on onnxruntime: MatMulNBits behind the input's
    # quantizer, in the asked block
    *(Case("matmuls", w, 8, WeightLayout(block_size=32)) for w in (4, 2)),
    Case("gemms", 4, 8, WeightLayout(block_size=16)),
    # per block along K, on a chip with native 4-bit weights
    Case("matmuls", 4, 8, WeightLayout(block_size=32), spec="bitfusion"),
    # MatMulNBits at both accuracy levels, with a plain Gemm's bias as the op's bias
    *(Case("matmuls", w, 32, _WEIGHT_ONLY) for w in (2, 4, 8)),
    Case("matmuls", 4, 32, WeightLayout(weight_only=True, accuracy_level=1)),
    Case("gemms", 4, 32, WeightLayout(weight_only=True, block_size=16)),
    # tables: GatherBlockQuantized, int8 rows (weights only and mixed), unit-scale 2-bit, per
    # channel
    Case("table", 4, 32, _WEIGHT_ONLY),
    Case("table", 8, 32, _WEIGHT_ONLY),
    Case("table", 8, 8),
    Case("table", 2, 8),
    Case("table", 4, 8),
    # recurrent layers: the recurrence weight stored with the input weight
    *(Case(op, w, a) for op in ("lstm", "gru") for w, a in ((8, 8), (4, 8), (2, 8))),
    # dynamic ranges: MatMulInteger behind DynamicQuantizeLinear (DynamicQuantizeMatMul), a 7-bit
    # grid where u8 x s8 saturates, float weights behind DynamicQuantizeLinear -> DequantizeLinear
    *(Case(m, 8, 8, dynamic=True) for m in ("matmuls", "gemms")),
    Case("matmuls", 8, 8, spec="x86_avx2", dynamic=True),
    Case("shared", 8, 8, dynamic=True),  # onnxruntime: MatMulIntegerToFloat behind one quantizer
    Case("gemms", 32, 8, dynamic=True),
    # ... an LSTM as DynamicQuantizeLSTM (7-bit grid on AVX2), or its input alone at float weights
    Case("lstm", 8, 8, dynamic=True),
    Case("bidirectional", 8, 8, dynamic=True),
    Case("bidirectional", 8, 8, spec="x86_avx2", dynamic=True),
    Case("lstm", 32, 8, dynamic=True),
]


def _proto(name: str) -> onnx.ModelProto:
    if name in ("lstm", "gru"):
        return _rnn(name.upper())
    models = {"convs": _convs, "matmuls": _matmuls, "gemms": _gemms, "shared": _shared}
    models["bidirectional"] = _bidirectional
    return {**models, "table": _table}[name]()


def _samples(proto: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    if proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64:
        rng = np.random.default_rng(1)
        return [{"ids": rng.integers(0, 50, (2, 7)).astype(np.int64)} for _ in range(3)]
    return random_inputs(proto, 3, batch=2)


def _written(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value)


def _produced_by(value: ir.Value | None, op: str) -> ir.Node | None:
    producer = value.producer() if value is not None else None
    return producer if producer is not None and producer.op_type == op else None


def _written_form(lowered: ir.Model, plan: LayerPlan) -> dict[str, object]:
    """What the lowered graph holds for the layer the plan describes, read back from the graph."""
    node = next(n for n in lowered.graph if n.name == plan.name or n.outputs[0].name == plan.name)
    found: dict[str, object] = {"op": node.op_type}
    if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
        found["form"] = {
            "MatMulNBits": WeightForm.MATMUL_NBITS,
            "GatherBlockQuantized": WeightForm.GATHER_BLOCK_QUANTIZED,
        }[node.op_type]
        found["block"] = node.attributes.get_int("block_size")
        if node.op_type == "GatherBlockQuantized":
            found["container"] = node.inputs[0].const_value.dtype
        return found
    if node.op_type == "DynamicQuantizeLSTM":
        found["form"], found["container"] = WeightForm.DYNAMIC_LSTM, node.inputs[1].dtype
        found["input_quantizer"] = None
        found["output_quantizer"] = False
        return found
    if node.op_type in ("Mul", "Add"):  # the end of MatMulInteger -> Cast -> Mul (-> Add)
        found["bias"] = BiasForm.FLOAT if node.op_type == "Add" else None
        while node.op_type != "MatMulInteger":
            node = node.inputs[0].producer()
        found["form"], found["container"] = WeightForm.MATMUL_INTEGER, node.inputs[1].dtype
        found["input_quantizer"] = (
            _produced_by(node.inputs[0], "DynamicQuantizeLinear").outputs[2].dtype
        )
        found["output_quantizer"] = False
        return found
    weight = node.inputs[1 if node.op_type in ("Conv", "Gemm", "MatMul", "LSTM", "GRU") else 0]
    dq = _produced_by(weight, "DequantizeLinear")
    mul = _produced_by(weight, "Mul")
    if node.op_type == "Gather" and weight.const_value is not None:
        found["form"] = (
            WeightForm.GATHER_ROWS if weight.dtype == ir.DataType.INT8 else WeightForm.FLOAT
        )
        found["container"] = weight.dtype if found["form"] is WeightForm.GATHER_ROWS else None
        return found
    if mul is not None:
        levels = _produced_by(mul.inputs[0], "DequantizeLinear")
        assert levels is not None and float(levels.inputs[1].const_value.numpy()) == 1.0
        found["form"], found["container"] = WeightForm.UNIT_SCALE_MUL, levels.inputs[0].dtype
    elif dq is not None:
        block = dq.attributes.get_int("block_size", 0)
        found["form"] = WeightForm.PER_BLOCK if block else WeightForm.PER_CHANNEL
        found["block"], found["container"] = block, dq.inputs[0].dtype
    else:
        found["form"], found["container"] = WeightForm.FLOAT, None
    if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias_dq = _produced_by(node.inputs[2], "DequantizeLinear")
        found["bias"] = BiasForm.INT32 if bias_dq is not None else BiasForm.FLOAT
    activation = node.inputs[0]
    quantizer = _produced_by(activation, "DequantizeLinear")
    # (its zero point carries the container type)
    found["input_quantizer"] = None if quantizer is None else quantizer.inputs[2].dtype
    out = node.outputs[0]
    target = out.uses()[0].node.outputs[0] if out.uses()[0].node.op_type == "Relu" else out
    found["output_quantizer"] = any(u.node.op_type == "QuantizeLinear" for u in target.uses())
    return found


def _dequantized_input(plan: LayerPlan) -> bool:
    """Whether the layer's input arrives from a DequantizeLinear in a uniformly lowered model: its
    own quantizer (there is no upstream output quantizer when activations stay float)."""
    return plan.input_quantizer is not None


def _expected_form(plan: LayerPlan) -> dict[str, object]:
    expected: dict[str, object] = {"form": plan.form}
    if plan.form in (WeightForm.MATMUL_NBITS, WeightForm.GATHER_BLOCK_QUANTIZED):
        expected["block"] = plan.block
        if plan.form is WeightForm.GATHER_BLOCK_QUANTIZED:
            expected["container"] = plan.container
        return expected
    expected["container"] = plan.container
    if plan.form in (WeightForm.PER_CHANNEL, WeightForm.PER_BLOCK):
        expected["block"] = plan.block
    if plan.form is WeightForm.GATHER_ROWS or plan.op_type == "Gather":
        return expected
    if plan.bias is not None or plan.form is WeightForm.MATMUL_INTEGER:
        expected["bias"] = plan.bias if _dequantized_input(plan) else BiasForm.FLOAT
    expected["input_quantizer"] = plan.input_quantizer
    expected["output_quantizer"] = plan.output_quantizer
    return expected


def _ort_kernel(lowered: ir.Model, plan: LayerPlan) -> Kernel:
    """The kernel onnxruntime runs for the layer, read from its optimized graph (the rule verify
    reports with, ``passes/lib/fusion.py``)."""
    optimized = OptimizedGraph(optimized_graph(ir.to_proto(lowered).SerializeToString()))
    node = next(n for n in lowered.graph if n.name == plan.name or n.outputs[0].name == plan.name)
    fused = optimized.runs(node)
    assert fused is not None, plan
    return fused.kernel


#: Specs that describe onnxruntime's CPU provider: their kernel kinds are the plan's kernels. (A
#: spec of another chip prices its own kernels; the cost pass prices only the pairs a spec runs,
#: so weight-only forms, whose activations stay float, are not priced at all.)
_ONNXRUNTIME_SPECS = frozenset({"x86_avx2", "x86_avx512_vnni", "arm_a72"})
#: The spec's kernel kinds (``Precision.kernel_kind``) by the plan's kernel.
_PRICED = {
    Kernel.FLOAT: "float",
    Kernel.INTEGER: "integer",
    Kernel.DEQUANTIZE_FLOAT: "emulated",
    Kernel.GATHER_INT8: "integer",
    Kernel.MATMUL_NBITS: "packed",
    Kernel.GATHER_BLOCK_QUANTIZED: "packed",
    Kernel.DYNAMIC_INTEGER: "integer",
    Kernel.DYNAMIC_LSTM: "integer",
}


def _runs(
    spec: hwspecs.HardwareSpec, pair: tuple[int | None, int | None], dynamic: bool = False
) -> bool:
    """Whether the spec prices ``pair`` (the cost pass offers only such candidates)."""
    try:
        return pair == (None, None) or spec.supports(*pair, dynamic)
    except (hwspecs.UnsupportedPrecisionError, ValueError):
        return False


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_lowering_size_evaluator_and_cost_agree_on_the_plan(case: Case) -> None:
    proto = _proto(case.model)
    samples = _samples(proto)
    spec = hwspecs.load(case.spec)
    context = CompileContext(calibration=CalibrationData(tuple(samples)), hw=spec)
    model = ir.from_proto(proto)
    PassManager(build_pipeline("canonicalize,calibrate", context))(model)
    layers = quantizable_layers(model.graph)
    plans = {
        layer.name: layer_plan(
            layer, case.wbits, case.abits, spec=spec, layout=case.layout, dynamic=case.dynamic
        )
        for layer in layers
    }
    owned = {
        v.name for layer in layers for v in layer.node.inputs if v is not None and v.const_value
    }
    fixed = sum(v.const_value.nbytes for n, v in model.graph.initializers.items() if n not in owned)
    predicted = fixed + sum(stored_bytes(layer, plans[layer.name]) for layer in layers)
    prepared = (case.wbits,) if case.wbits != 32 else (8,)
    evaluator = Evaluator(model, samples, wbits=prepared, spec=spec, layout=case.layout)
    simulated = evaluator.run({name: case.bits for name in plans})
    shapes = static_shapes(model, context)
    cost_model = hwspecs.CostModel(spec)
    priced = {
        layer.name: cost_model.kernel(
            describe(layer, shapes),
            *pair,
            packed_kernel=priced_kernel(plans[layer.name]),
            dynamic=case.dynamic,
        )
        for layer in layers
        for pair in [priced_pair(plans[layer.name])]
        if case.spec in _ONNXRUNTIME_SPECS and _runs(spec, pair, case.dynamic)
    }

    lowered = model.clone()
    lower = get("lower-qdq")(
        context=context,
        uniform=str(case.bits),
        weight_only=case.layout.weight_only,
        block_size=case.layout.block_size,
        accuracy_level=case.layout.accuracy_level,
    )
    lower(lowered)
    onnx.checker.check_model(ir.to_proto(lowered), full_check=True)

    for layer in layers:
        plan = plans[layer.name]
        written = _written_form(lowered, plan)
        assert {k: written.get(k) for k in _expected_form(plan)} == _expected_form(plan), plan
        assert _ort_kernel(lowered, plan) is plan.kernel, plan
        if layer.name in priced:
            assert priced[layer.name].kernel_kind == _PRICED[plan.kernel], plan
    # The plan's byte sum counts an int32 bias (values and scales) wherever the bias may become
    # one: an upper bound by 4 bytes per element where the input does not arrive dequantized.
    unrealized = sum(
        4 * int(np.prod(layer.node.inputs[2].const_value.shape))
        for layer in layers
        if plans[layer.name].bias is BiasForm.INT32 and not _dequantized_input(plans[layer.name])
    )
    assert _written(lowered) == predicted - unrealized
    # The graph as written (onnxruntime's own MatMulNBits fusion is checked as a kernel above; its
    # int8 activations are not simulated, see passes/lib/evaluator/graph.py).
    # (a kernel onnxruntime fuses computes its own numbers: compared where it runs)
    fused = any(
        plan.int8_input_block is not None and plan.form is not WeightForm.MATMUL_NBITS
        for plan in plans.values()
    )
    levels = ("basic", "all") if case.dynamic else ("all",) if fused else ("basic",)
    for sample, want in zip(samples, simulated, strict=True):
        for level in levels:
            for got, w in zip(run_ort(lowered, sample, level), want, strict=True):
                assert np.abs(got - w).max() <= 1e-5 * np.abs(w).max()


def test_every_weight_form_and_kernel_is_covered() -> None:
    """The cases above reach every form, bias form and kernel the plan can name."""
    forms, kernels, biases = set(), set(), set()
    for case in CASES:
        model = ir.from_proto(_proto(case.model))
        spec = hwspecs.load(case.spec)
        for layer in quantizable_layers(model.graph):
            plan = layer_plan(
                layer, case.wbits, case.abits, spec=spec, layout=case.layout, dynamic=case.dynamic
            )
            forms.add(plan.form)
            kernels.add(plan.kernel)
            biases.add(plan.bias)
    assert forms == set(WeightForm)
    assert kernels == set(Kernel)
    assert biases == {None, BiasForm.FLOAT, BiasForm.INT32}


def test_a_pruned_channel_gets_bias_level_zero_not_a_division_by_zero() -> None:
    with np.errstate(all="raise"):
        levels, scales = int32_bias(
            np.array([0.0, 0.25], np.float32), 0.1, np.array([0.0, 0.5], np.float32)
        )
    assert levels.tolist() == [0, 5] and scales.tolist() == [1.0, np.float32(0.05)]
