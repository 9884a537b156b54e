"""``lower-qdq``: turn the chosen bits into QuantizeLinear/DequantizeLinear and low-bit weights.

Each quantizable layer with bits (``mpqc.bits``, or ``uniform=w8a8`` for all) gets:

- its weight stored as integers in the real container type (INT2/INT4/INT8/INT16) with per-channel
  scales, behind a DequantizeLinear — the file shrinks by the bit-width;
- a Q/DQ pair on its activation input, calibrated from ``mpqc.calib.range``. Layers that read the
  same tensor at the same bit-width share one quantizer; a layer asking for other bits gets its own,
  so every layer sees exactly the numbers it was searched with;
- where onnxruntime can run the layer as an integer kernel (8-bit containers on both sides), a Q/DQ
  pair on its output too — after a following Relu, which onnxruntime then drops, because a quantizer
  with zero point 0 already clips at zero;
- when both its input and weight are quantized, its bias as int32 at scale s_x·s_w, which is what
  the runtime's QLinearConv/QGemm fusion needs (and, where that would overflow int32, at a wider
  scale: see ``_Lowering.quantize_bias``).

Grids narrower than their container (3, 5, 6, 7 bits) keep their exact levels: weights are rounded on
the narrow grid, activations get a float Clip to the narrow range before QuantizeLinear.

Everything else stays float: quantizing Add/Mul/Softmax/LayerNorm tensors is where onnxruntime's
default recipe loses accuracy (PEERS.md). Without calibrated ranges only weights are quantized, and
the report says so.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from mpqc.ir import annotations
from mpqc.ir.layers import Layer, constant_array, quantizable_layers
from mpqc.passes.base import Pass, option
from mpqc.passes.grid import FLOAT_BITS, activation_grid, activation_qparams, min_opset, quantize_weight, weight_grid
from mpqc.passes.lower.opset import ensure_opset
from mpqc.passes.registry import register
from mpqc.passes.target import weight_grid_bits

__all__ = ["FLOAT_BITS", "LowerQDQ", "fusable", "output_target", "parse_bits"]

_BITS = re.compile(r"^w(\d+)a(\d+)$")


def parse_bits(text: str) -> tuple[int, int]:
    """'w4a8' -> (4, 8); a ValueError with the expected form otherwise."""
    match = _BITS.match(text.strip().lower())
    if not match:
        raise ValueError(f"'{text}' is not a bit choice like w8a8 or w4a8")
    w, a = int(match.group(1)), int(match.group(2))
    for kind, bits in (("weight", w), ("activation", a)):
        if not (2 <= bits <= 16 or bits == FLOAT_BITS):
            raise ValueError(f"{kind} bits {bits} in '{text}' are outside 2..16 (or 32 for float)")
    return w, a


@register
class LowerQDQ(Pass):
    name = "lower-qdq"
    writes = frozenset({"mpqc.bits", "mpqc.report"})
    preserves = frozenset({"mpqc.pareto", "mpqc.cost.total"})

    @dataclasses.dataclass(frozen=True)
    class Options:
        uniform: str = option("", "one choice for every layer, e.g. w8a8 or w4a8 (empty: read mpqc.bits)")
        act_signed: bool = option(False, "signed activations (slow on onnxruntime's CPU provider)")
        fuse_outputs: bool = option(True, "quantize 8-bit layers' outputs so the runtime fuses integer kernels")

        def __post_init__(self) -> None:
            if self.uniform:
                parse_bits(self.uniform)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan = self._plan(model)
        if not plan:
            self.context.note("lower-qdq: no layer has bits to lower; the model stays float")
            return ir.passes.PassResult(model, modified=False)
        grids = [weight_grid(w) for _, (w, _) in plan if w != FLOAT_BITS]
        grids += [activation_grid(a, self.options.act_signed) for _, (_, a) in plan if a != FLOAT_BITS]
        ensure_opset(model, min_opset(*grids))
        # The upgrade may rebuild the graph: find the layers again by name.
        by_name = {layer.name: layer for layer in quantizable_layers(model.graph)}
        lowering = _Lowering(model.graph, self.options.act_signed)
        ranges_missing = False
        narrowed = set()
        for name, (wbits, abits) in plan:
            layer = by_name[name]
            annotations.BITS.set(layer.node, {"w": wbits, "a": abits})
            if wbits != FLOAT_BITS:
                grid_bits = weight_grid_bits(self.context.hw, wbits, abits)
                if grid_bits != wbits:
                    narrowed.add((wbits, abits, grid_bits))
                lowering.quantize_weight(layer, grid_bits)
            if abits != FLOAT_BITS and layer.activation is not None:
                ranges_missing |= not lowering.quantize_input(layer, abits)
        if self.options.fuse_outputs:
            for name, (wbits, abits) in plan:
                layer = by_name[name]
                if fusable(wbits, abits) and layer.activation is not None:
                    lowering.quantize_output(layer, abits)
        for name, _ in plan:
            lowering.quantize_bias(by_name[name])
        for wbits, abits, grid_bits in sorted(narrowed):
            self.context.note(
                f"lower-qdq: {self.context.hw.name} runs w{wbits}a{abits} on a {grid_bits}-bit weight grid "
                "(its integer kernel would saturate on the full grid)"
            )
        if ranges_missing:
            self.context.note("lower-qdq: some activations have no calibrated range and stay float (run calibrate with data)")
        report = annotations.REPORT.get(model, {}) or {}
        report["lowered_layers"] = len(plan)
        annotations.REPORT.set(model, report)
        return ir.passes.PassResult(model, modified=True)

    def _plan(self, model: ir.Model) -> list[tuple[str, tuple[int, int]]]:
        plan = []
        uniform = parse_bits(self.options.uniform) if self.options.uniform else None
        for layer in quantizable_layers(model.graph):
            if uniform is not None:
                bits = uniform
            else:
                chosen = annotations.BITS.get(layer.node)
                if chosen is None:
                    continue
                bits = (int(chosen["w"]), int(chosen["a"]))
            if bits != (FLOAT_BITS, FLOAT_BITS):
                plan.append((layer.name, bits))
        return plan


def _dequantize_scale(value: ir.Value | None) -> np.ndarray | None:
    """The scale of the DequantizeLinear that produces ``value``, or None if it is not one."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    return constant_array(producer.inputs[1])


#: Weight containers that onnxruntime's QDQ fusion mishandles (see ``_dequantize_then_scale``).
_UNFUSABLE_CONTAINERS = frozenset({ir.DataType.INT2, ir.DataType.UINT2})


def output_target(layer: Layer) -> ir.Value | None:
    """The tensor that gets an integer kernel's output quantizer: the layer's output, or the output
    of a single following Relu; None when that tensor is only the model's result, which stays
    exactly as the float layer computes it. The evaluator simulates the same rule."""
    out = layer.node.outputs[0]
    uses = out.uses()
    target = uses[0].node.outputs[0] if len(uses) == 1 and uses[0].node.op_type == "Relu" else out
    if target.is_graph_output() and not target.uses():
        return None
    return target


def fusable(wbits: int, abits: int) -> bool:
    """onnxruntime's CPU provider has integer kernels for 8-bit containers on both operands: such a
    layer gets an output quantizer too. The evaluator and the size footprint follow this rule."""
    return 5 <= wbits <= 8 and 5 <= abits <= 8


class _Lowering:
    """Inserts Q/DQ into one graph, sharing quantizers keyed by (tensor, bits)."""

    def __init__(self, graph: ir.Graph, act_signed: bool) -> None:
        self.graph = graph
        self.act_signed = act_signed
        self.weights: dict[tuple[int, int], tuple[ir.Value, np.ndarray]] = {}
        self.activations: dict[tuple[int, int], ir.Value] = {}
        #: Nodes this lowering inserted for activations: they read the float tensor on purpose.
        self.inserted: set[int] = set()
        self.names = {v.name for v in graph.initializers.values()} | {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def _constant(self, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
        name = self._unique(base)
        tensor = ir.Tensor(array, dtype=dtype, name=name) if dtype is not None else ir.tensor(array, name=name)
        value = ir.Value(name=name, const_value=tensor, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype))
        self.graph.register_initializer(value)
        return value

    def _add(self, node: ir.Node, name: str) -> ir.Value:
        """Name ``node``'s output uniquely and the node after it (ONNX keeps the namespaces apart)."""
        out = node.outputs[0]
        out.name = self._unique(name)
        node.name = out.name
        return out

    def _insert_before(self, anchor: ir.Node, *nodes: ir.Node) -> None:
        self.graph.insert_before(anchor, nodes)

    # -- weights ---------------------------------------------------------------------------

    def quantize_weight(self, layer: Layer, bits: int) -> None:
        weight = layer.weight
        if layer.node.op_type == "Gather" and weight_grid(bits).width == 8 and len(weight.uses()) == 1:
            self._gather_rows_then_scale(layer, bits)
            return
        key = (id(weight), bits)
        if key not in self.weights:
            array = layer.weight_array()
            q, scales = quantize_weight(array, bits, layer.channel_axis)
            grid = weight_grid(bits)
            base = weight.name or layer.name
            q_value = self._constant(f"{base}.w{bits}", q, grid.container)
            if grid.container in _UNFUSABLE_CONTAINERS:
                nodes = self._dequantize_then_scale(base, bits, q_value, scales, layer.channel_axis, len(array.shape))
            else:
                s_value = self._constant(f"{base}.w{bits}.scale", scales)
                z_value = self._constant(f"{base}.w{bits}.zp", np.zeros(scales.shape, grid.numpy_dtype), grid.container)
                dq = ir.node(
                    "DequantizeLinear",
                    [q_value, s_value, z_value],
                    {"axis": layer.channel_axis} if scales.size > 1 else {},
                )
                self._add(dq, f"{base}.w{bits}.dq")
                nodes = [dq]
            out = nodes[-1].outputs[0]
            out.dtype, out.shape = weight.dtype, weight.shape
            self.graph.insert_before(layer.node, nodes)
            self.weights[key] = (out, scales)
        layer.node.replace_input_with(layer.weight_index, self.weights[key][0])
        if not weight.uses() and weight.is_initializer() and not weight.is_graph_output():
            self.graph.initializers.pop(weight.name)

    def _gather_rows_then_scale(self, layer: Layer, bits: int) -> None:
        """An embedding table: gather the int8 rows first, then scale only those rows.

        A DequantizeLinear in front of the Gather would turn the whole table back into floats on
        every run (MiniLM: 2.2x slower than float). Gathering the integers and their per-row
        scales, then ``float(q) * s``, computes the same float32 numbers for the rows looked up.
        """
        node = layer.node
        weight = layer.weight
        q, scales = quantize_weight(layer.weight_array(), bits, 0)
        base = weight.name or layer.name
        node.replace_input_with(0, self._constant(f"{base}.w{bits}", q, weight_grid(bits).container))
        self.graph.initializers.pop(weight.name)
        rows = node.outputs[0]
        uses = list(rows.uses())
        output_name = rows.name if rows.is_graph_output() else None
        column = scales.reshape(-1, *([1] * (q.ndim - 1)))
        row_scales = ir.node("Gather", [self._constant(f"{base}.w{bits}.scale", column), node.inputs[1]], {"axis": 0})
        self._add(row_scales, f"{base}.w{bits}.row_scale")
        levels = ir.node("DequantizeLinear", [rows, self._constant(f"{base}.w{bits}.unit", np.array(1.0, np.float32))])
        self._add(levels, f"{base}.w{bits}.levels")
        scaled = ir.node("Mul", [levels.outputs[0], row_scales.outputs[0]])
        out = self._add(scaled, f"{base}.w{bits}.rows")
        out.dtype, out.shape = rows.dtype, rows.shape
        rows.dtype = weight_grid(bits).container
        self.graph.insert_after(node, [row_scales, levels, scaled])
        for use in uses:
            use.node.replace_input_with(use.idx, out)
        if output_name is not None:  # the model returns the rows: it keeps its output name
            self.graph.outputs[self.graph.outputs.index(rows)] = out
            rows.name = self._unique(f"{base}.w{bits}.int_rows")
            out.name = output_name

    def _dequantize_then_scale(self, base: str, bits: int, q_value: ir.Value, scales: np.ndarray, axis: int, rank: int) -> list[ir.Node]:
        """DequantizeLinear at unit scale, then a Mul by the per-channel scales.

        onnxruntime's QDQ fusion turns DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear into
        QLinearConv/QLinearMatMul without checking the weight type, and the session then fails to
        load because those kernels take no INT2 weights. A Mul between the weight's DQ and the layer
        hides the pattern; the numbers are the same (q * s in float32, as DequantizeLinear computes).
        """
        one = self._constant(f"{base}.w{bits}.unit", np.array(1.0, np.float32))
        levels = ir.node("DequantizeLinear", [q_value, one])
        self._add(levels, f"{base}.w{bits}.levels")
        shape = [1] * rank
        shape[axis] = -1
        s_value = self._constant(f"{base}.w{bits}.scale", scales.reshape(shape))
        scaled = ir.node("Mul", [levels.outputs[0], s_value])
        self._add(scaled, f"{base}.w{bits}.dq")
        return [levels, scaled]

    # -- activations ------------------------------------------------------------------------

    def _quantizer(self, value: ir.Value, bits: int, anchor: ir.Node) -> ir.Value | None:
        """The DQ output for ``value`` at ``bits`` (created on first use); None without a range."""
        key = (id(value), bits)
        if key in self.activations:
            return self.activations[key]
        observed = annotations.CALIB_RANGE.get(value)
        if observed is None:
            return None
        grid = activation_grid(bits, self.act_signed)
        scale, zero_point = activation_qparams(observed["lo"], observed["hi"], grid)
        base = value.name or "act"
        s_value = self._constant(f"{base}.a{bits}.scale", np.array(scale, np.float32))
        z_value = self._constant(f"{base}.a{bits}.zp", np.array(zero_point, grid.numpy_dtype), grid.container)
        source = value
        nodes: list[ir.Node] = []
        if grid.narrow:
            lo = np.float32((grid.qmin - zero_point) * float(scale))
            hi = np.float32((grid.qmax - zero_point) * float(scale))
            clip = ir.node("Clip", [value, self._constant(f"{base}.a{bits}.lo", np.array(lo)), self._constant(f"{base}.a{bits}.hi", np.array(hi))])
            self._add(clip, f"{base}.a{bits}.clipped")
            nodes.append(clip)
            source = clip.outputs[0]
        q = ir.node("QuantizeLinear", [source, s_value, z_value])
        self._add(q, f"{base}.a{bits}.q")
        dq = ir.node("DequantizeLinear", [q.outputs[0], s_value, z_value])
        out = self._add(dq, f"{base}.a{bits}.dq")
        # Quantized activations are float tensors, typed even when the model was not shape-inferred.
        out.dtype, out.shape = value.dtype or ir.DataType.FLOAT, value.shape
        nodes += [q, dq]
        producer = value.producer()
        if producer is not None and producer.graph is self.graph:
            self.graph.insert_after(producer, nodes)
        else:
            self.graph.insert_before(anchor, nodes)
        self.inserted.update(id(n) for n in nodes)
        self.activations[key] = out
        return out

    def quantize_input(self, layer: Layer, bits: int) -> bool:
        value = layer.activation
        assert value is not None and layer.activation_index is not None
        quantized = self._quantizer(value, bits, layer.node)
        if quantized is None:
            return False
        layer.node.replace_input_with(layer.activation_index, quantized)
        return True

    def quantize_output(self, layer: Layer, bits: int) -> None:
        """Q/DQ after the layer, on ``output_target(layer)``."""
        target = output_target(layer)
        if target is None:
            return
        quantized = self._quantizer(target, bits, layer.node)
        if quantized is None:
            return
        for use in list(target.uses()):
            if id(use.node) not in self.inserted:
                use.node.replace_input_with(use.idx, quantized)

    def quantize_bias(self, layer: Layer) -> None:
        """The float bias of a Conv/Gemm whose input and weight are both dequantized, as int32 behind a DQ.

        At scale s_x·s_w the bias is what onnxruntime's QLinearConv/QGemm fusion needs. Layers that do
        not fuse need it too: onnxruntime's BiasQuantization rewrites a float bias between two DQ'd
        operands into int32 at s_x·s_w itself, without a range check, and with 16-bit grids
        (s_x·s_w around 1e-9) the int32 saturates and the output is wrong. Channels whose bias would
        not fit get a wider scale instead, |b| / 2^30, which keeps 30 bits of the float bias.
        """
        node = layer.node
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
            return
        bias = constant_array(node.inputs[2])
        x_scale = _dequantize_scale(node.inputs[0])
        w_scale = _dequantize_scale(node.inputs[1])
        if bias is None or bias.ndim != 1 or x_scale is None or w_scale is None or x_scale.size != 1:
            return
        scale = np.broadcast_to(np.float32(x_scale.reshape(())) * w_scale.astype(np.float32).reshape(-1), bias.shape)
        scale = np.maximum(scale, np.abs(bias).astype(np.float32) / np.float32(2**30)).astype(np.float32)
        q = np.rint(bias / scale).astype(np.int32)
        base = node.inputs[2].name or layer.name
        dq = ir.node(
            "DequantizeLinear",
            [self._constant(f"{base}.i32", q), self._constant(f"{base}.i32.scale", scale)],  # zero point 0 by default
            {"axis": 0},
        )
        self._add(dq, f"{base}.i32.dq")
        self.graph.insert_before(node, dq)
        old = node.inputs[2]
        node.replace_input_with(2, dq.outputs[0])
        if old is not None and not old.uses() and old.is_initializer():
            self.graph.initializers.pop(old.name)
