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

Weight layouts (``passes/lib/layout.py``): ``block_size`` quantizes MatMul/Gemm weights per block
along K; ``weight_only`` keeps every activation float, turns MatMuls and plain Gemms with constant
2-D weights into onnxruntime's ``MatMulNBits`` and 4-bit embedding tables into its
``GatherBlockQuantized`` (``accuracy_level`` 4, int8 activations inside the kernel, by default). An
LSTM's/GRU's recurrence weight R is quantized with its input weight W (weights only: the recurrence
runs inside the op). Bits the target's spec does not run are refused with the spec's list.

Layers inside If/Loop/Scan bodies are lowered weights-only (a DequantizeLinear inside the body, or
MatMulNBits under ``weight_only``) at the ``uniform`` weight bits or at bits a user wrote on them;
the search never chooses for them (analysis cannot run body tensors), so under a search they stay
float. Every layer or weighted op left float is listed with its op and reason in ``mpqc.report``'s
``left_float``.

Everything else stays float: quantizing Add/Mul/Softmax/LayerNorm tensors is where onnxruntime's
default recipe loses accuracy (PEERS.md). Without calibrated ranges only weights are quantized, and
the report says so.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.ir.layers import Layer, constant_array, quantizable_layers
from mpqc.passes.infra.base import Pass, PassError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.grid import (
    activation_grid,
    activation_qparams,
    min_opset,
    quantize_weight,
    quantize_weight_blocked,
    weight_grid,
)
from mpqc.passes.lib.layout import WeightLayout, block_axis, kn_weight
from mpqc.passes.lib.matmul_nbits import pack_matmul_nbits
from mpqc.passes.lib.opset import ensure_opset
from mpqc.passes.lib.target import weight_grid_bits

__all__ = ["LowerQDQPass", "fusable", "output_target"]


@register
class LowerQDQPass(Pass):
    name = "lower-qdq"
    may_read = frozenset({annotations.BITS, annotations.CALIB_RANGE})
    writes = frozenset({annotations.BITS, annotations.REPORT})
    preserves = frozenset({annotations.PARETO, annotations.MODEL_COST})

    @dataclasses.dataclass(frozen=True)
    class Options:
        uniform: str = option(
            "", "one choice for every layer, e.g. w8a8 or w4a8 (empty: read mpqc.bits)"
        )
        act_signed: bool = option(False, "signed activations (slow on onnxruntime's CPU provider)")
        fuse_outputs: bool = option(
            True, "quantize 8-bit layers' outputs so the runtime fuses integer kernels"
        )
        weight_only: bool = option(
            False, "float activations; large constant MatMuls become onnxruntime's MatMulNBits"
        )
        block_size: int = option(
            0, "per-block weights along K for MatMul/Gemm (0: per channel; MatMulNBits default 32)"
        )
        accuracy_level: int = option(
            4,
            "MatMulNBits accuracy_level: 4 quantizes A to int8 per block (fast), 1 computes in float32",
        )

        def __post_init__(self) -> None:
            if self.uniform:
                Bits.parse(self.uniform)
            self.layout  # validates block_size and accuracy_level

        @property
        def layout(self) -> WeightLayout:
            return WeightLayout(self.weight_only, self.block_size, self.accuracy_level)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        left_float = _without_quantized_form(model.graph)
        plan, skipped = self._plan(model)
        left_float += skipped
        if not plan:
            self.nothing_to_do("lower-qdq: no layer has bits to lower; the model stays float")
            self._report(model, 0, left_float)
            return ir.passes.PassResult(model, modified=bool(left_float))
        self._check_supported(plan)
        layout = self.options.layout
        layers = {layer.name: layer for layer in quantizable_layers(model.graph, subgraphs=True)}
        # Layers that become onnxruntime contrib ops need no newer ai.onnx opset, only IR 10 for an INT4 table.
        contrib = {
            n
            for n, (w, a) in plan
            if layout.matmul_nbits(layers[n], w, a) or layout.gather_blocked(layers[n], w)
        }
        grids = [weight_grid(w) for n, (w, _) in plan if w != FLOAT_BITS and n not in contrib]
        grids += [
            activation_grid(a, self.options.act_signed) for _, (_, a) in plan if a != FLOAT_BITS
        ]
        blocked = any(layout.block(layers[n], w, a) for n, (w, a) in plan if n not in contrib)
        ensure_opset(model, max(min_opset(*grids), 21 if blocked else 0))
        if contrib:
            model.ir_version = max(model.ir_version, 10)
        # The upgrade may rebuild the graph: find the layers again by name.
        by_name = {layer.name: layer for layer in quantizable_layers(model.graph, subgraphs=True)}
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
                if layout.matmul_nbits(layer, grid_bits, abits) or layout.gather_blocked(
                    layer, grid_bits
                ):
                    model.opset_imports.setdefault("com.microsoft", 1)
                if layout.matmul_nbits(layer, grid_bits, abits):
                    lowering.matmul_nbits(
                        layer, grid_bits, layout.nbits_block, layout.accuracy_level
                    )
                    continue
                lowering.quantize_weight(layer, grid_bits, layout.block(layer, grid_bits, abits))
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
            self.context.note(
                "lower-qdq: some activations have no calibrated range and stay float (run calibrate with data)"
            )
        self._report(model, len(plan), left_float)
        return ir.passes.PassResult(model, modified=True)

    def _check_supported(self, plan: list[tuple[str, tuple[int, int]]]) -> None:
        """Bits the target's spec does not run are refused, naming what it runs (``mpqc.bits`` may
        have been edited by hand, and ``uniform`` is not checked elsewhere when the pass runs alone)."""
        spec = self.context.hw
        if spec is None:
            return
        for name, (wbits, abits) in plan:
            for kind, bits, allowed in (
                ("weight", wbits, spec.weight_bits),
                ("activation", abits, spec.act_bits),
            ):
                if bits != FLOAT_BITS and bits not in allowed:
                    raise PassError(
                        f"layer '{name}': {spec.name} does not run {bits}-bit {kind}s: it supports {', '.join(map(str, allowed))}"
                    )

    def _report(self, model: ir.Model, lowered: int, left_float: list[dict[str, str]]) -> None:
        """``lowered_layers`` and ``left_float``: {layer, op, reason} for each weighted op left float."""
        section: dict[str, object] = {"lowered_layers": lowered}
        if left_float:
            section["left_float"] = left_float
            self.context.note(
                f"lower-qdq: {len(left_float)} weighted op(s) stay float; mpqc.report left_float says why"
            )
        self.report(model, section)

    def _plan(
        self, model: ir.Model
    ) -> tuple[list[tuple[str, tuple[int, int]]], list[dict[str, str]]]:
        """(layer name, bits) to lower — activations float under ``weight_only`` and in bodies — and
        the body layers left float, with their reason."""
        plan, skipped = [], []
        uniform = Bits.parse(self.options.uniform) if self.options.uniform else None
        for layer in quantizable_layers(model.graph, subgraphs=True):
            chosen = annotations.BITS.get(layer.node)
            if uniform is not None:
                bits = uniform
            elif chosen is not None:
                bits = (int(chosen["w"]), int(chosen["a"]))
            elif layer.in_subgraph:
                host = layer.host
                assert host is not None
                skipped.append(
                    {
                        "layer": layer.name,
                        "op": layer.node.op_type,
                        "reason": f"inside the body of {host.op_type} '{host.name or host.outputs[0].name}': "
                        "the search does not choose bits there (its tensors cannot be calibrated); give uniform bits to quantize its weights",
                    }
                )
                continue
            else:
                continue
            if self.options.weight_only or layer.in_subgraph:
                bits = (bits[0], FLOAT_BITS)
            if bits != (FLOAT_BITS, FLOAT_BITS):
                plan.append((layer.name, bits))
        return plan, skipped


#: A constant this large (elements, 2-D or more) held by an op with no quantized form is worth a report line.
_REPORTED_CONSTANT = 256
#: Ops that hold low-bit or integer constants by design.
_QUANTIZER_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Constant"})


def _without_quantized_form(graph: ir.Graph) -> list[dict[str, str]]:
    """Ops (main graph and bodies) holding a large float constant that no layer rule quantizes."""
    layers = {id(layer.node) for layer in quantizable_layers(graph, subgraphs=True)}
    found = []
    for g in (graph, *graph.subgraphs()):
        for node in g:
            if id(node) in layers or node.op_type in _QUANTIZER_OPS:
                continue
            for value in node.inputs:
                array = constant_array(value)
                if (
                    array is None
                    or array.ndim < 2
                    or array.size < _REPORTED_CONSTANT
                    or not np.issubdtype(array.dtype, np.floating)
                ):
                    continue
                assert value is not None
                found.append(
                    {
                        "layer": node.name or node.outputs[0].name or node.op_type,
                        "op": node.op_type,
                        "reason": f"{node.op_type} has no quantized form: its {array.size}-element constant '{value.name}' stays float",
                    }
                )
    return found


def _replace_node(old: ir.Node, new: ir.Node) -> None:
    """Put ``new`` where ``old`` was: same name, output name, annotations, uses and graph outputs."""
    graph = old.graph
    assert graph is not None
    graph.insert_before(old, new)
    before, after = old.outputs[0], new.outputs[0]
    after.type, after.shape = (
        before.type,
        before.shape,
    )  # (type, not dtype: an untyped value stays untyped)
    before.replace_all_uses_with(after, replace_graph_outputs=True)
    new.name = old.name or ""
    new.meta.update(old.meta)
    new.metadata_props.update(old.metadata_props)
    graph.remove(old, safe=True)
    after.name, before.name = before.name, None


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
        self.weights: dict[tuple[int, ...], tuple[ir.Value, np.ndarray]] = {}
        self.nbits_scales: dict[tuple[int, ...], ir.Value] = {}
        self.activations: dict[tuple[int, int], ir.Value] = {}
        #: Nodes this lowering inserted for activations: they read the float tensor on purpose.
        self.inserted: set[int] = set()
        self.names = (
            {v.name for v in graph.initializers.values()}
            | {v.name for n in graph for v in n.outputs}
            | {v.name for v in graph.inputs}
        )

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def _constant(
        self,
        base: str,
        array: np.ndarray,
        dtype: ir.DataType | None = None,
        graph: ir.Graph | None = None,
    ) -> ir.Value:
        """A new initializer of ``graph`` (default: the main graph), uniquely named after ``base``."""
        name = self._unique(base)
        tensor = (
            ir.Tensor(array, dtype=dtype, name=name)
            if dtype is not None
            else ir.tensor(array, name=name)
        )
        value = ir.Value(
            name=name,
            const_value=tensor,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(tensor.dtype),
        )
        (graph or self.graph).register_initializer(value)
        return value

    def _add(self, node: ir.Node, name: str) -> ir.Value:
        """Name ``node``'s output uniquely and the node after it (ONNX keeps the namespaces apart)."""
        out = node.outputs[0]
        out.name = self._unique(name)
        node.name = out.name
        return out

    # -- weights ---------------------------------------------------------------------------

    def quantize_weight(self, layer: Layer, bits: int, block: int = 0) -> None:
        """The layer's weight (and an RNN's recurrence weight) as ``bits``-bit integers behind a DequantizeLinear.

        ``block`` > 0 quantizes per block of that many elements along ``layout.block_axis``.
        """
        if layer.node.op_type == "Gather" and block:
            self._gather_block_quantized(layer, bits, block)
            return
        if (
            layer.node.op_type == "Gather"
            and weight_grid(bits).width == 8
            and len(layer.weight.uses()) == 1
        ):
            self._gather_rows_then_scale(layer, bits)
            return
        self._replace_weight(layer, layer.weight_index, bits, block)
        for index in layer.other_weight_indices:
            self._replace_weight(layer, index, bits, 0)

    def _replace_weight(self, layer: Layer, index: int, bits: int, block: int) -> None:
        weight = layer.node.inputs[index]
        assert weight is not None
        graph = layer.node.graph
        assert graph is not None
        key = (id(weight), bits, block, id(graph))
        if key not in self.weights:
            array = constant_array(weight)
            assert array is not None
            grid = weight_grid(bits)
            base = weight.name or layer.name
            if block:
                axis = block_axis(layer)
                assert axis is not None
                q, scales = quantize_weight_blocked(array, bits, axis, block)
            else:
                axis = layer.channel_axis
                q, scales = quantize_weight(array, bits, axis)
            q_value = self._constant(f"{base}.w{bits}", q, grid.container, graph)
            if block:
                s_value = self._constant(f"{base}.w{bits}.scale", scales, graph=graph)
                dq = ir.node(
                    "DequantizeLinear", [q_value, s_value], {"axis": axis, "block_size": block}
                )
                self._add(dq, f"{base}.w{bits}.dq")
                nodes = [dq]
            elif grid.container in _UNFUSABLE_CONTAINERS:
                nodes = self._dequantize_then_scale(
                    base, bits, q_value, scales, axis, array.ndim, graph
                )
            else:
                s_value = self._constant(f"{base}.w{bits}.scale", scales, graph=graph)
                z_value = self._constant(
                    f"{base}.w{bits}.zp",
                    np.zeros(scales.shape, grid.numpy_dtype),
                    grid.container,
                    graph,
                )
                dq = ir.node(
                    "DequantizeLinear",
                    [q_value, s_value, z_value],
                    {"axis": axis} if scales.size > 1 else {},
                )
                self._add(dq, f"{base}.w{bits}.dq")
                nodes = [dq]
            out = nodes[-1].outputs[0]
            # Typed from the numbers: a Constant node's output may carry no type.
            out.dtype, out.shape = ir.DataType.from_numpy(array.dtype), ir.Shape(array.shape)
            graph.insert_before(layer.node, nodes)
            self.weights[key] = (out, scales)
        layer.node.replace_input_with(index, self.weights[key][0])
        self._drop_if_unused(weight)

    @staticmethod
    def _drop_if_unused(weight: ir.Value) -> None:
        """Remove the float weight once nothing reads it: an initializer, or the Constant node holding it."""
        if weight.uses() or weight.is_graph_output():
            return
        producer = weight.producer()
        if producer is not None and producer.op_type == "Constant" and producer.graph is not None:
            producer.graph.remove(producer, safe=True)
        elif weight.is_initializer() and weight.graph is not None:
            weight.graph.initializers.pop(weight.name)

    def matmul_nbits(self, layer: Layer, bits: int, block: int, accuracy_level: int) -> None:
        """Replace a MatMul or plain Gemm by onnxruntime's MatMulNBits over the packed weight
        (``matmul_nbits.py``); a Gemm's bias becomes MatMulNBits' bias input."""
        node, weight = layer.node, layer.weight
        graph = node.graph
        assert graph is not None
        array = kn_weight(layer)
        k, n = array.shape
        key = (id(weight), bits, -block, id(graph))
        if key not in self.weights:
            packed, scales, width = pack_matmul_nbits(array, bits, block)
            base = weight.name or layer.name
            b_value = self._constant(f"{base}.nbits{bits}", packed, graph=graph)
            s_value = self._constant(f"{base}.nbits{bits}.scale", scales, graph=graph)
            self.weights[key] = (b_value, s_value.const_value.numpy())
            self.nbits_scales[key] = s_value
        b_value = self.weights[key][0]
        width = weight_grid(bits).width
        attributes = {
            "K": k,
            "N": n,
            "bits": width,
            "block_size": block,
            "accuracy_level": accuracy_level,
        }
        inputs = [node.inputs[0], b_value, self.nbits_scales[key]]
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        if bias is not None:
            bias_array = constant_array(bias)
            assert bias_array is not None
            column = (
                bias
                if bias_array.ndim == 1
                else self._constant(
                    f"{bias.name or layer.name}.column", bias_array.reshape(-1), graph=graph
                )
            )
            inputs += [None, None, column]  # no zero points (symmetric), no g_idx
        _replace_node(node, ir.node("MatMulNBits", inputs, attributes, domain="com.microsoft"))
        self._drop_if_unused(weight)
        if bias is not None:
            self._drop_if_unused(bias)

    def _gather_block_quantized(self, layer: Layer, bits: int, block: int) -> None:
        """Replace a table lookup by onnxruntime's GatherBlockQuantized over the INT4 table in blocks
        along the embedding axis (zero point 0, the default for a signed table)."""
        node, weight = layer.node, layer.weight
        graph = node.graph
        assert graph is not None
        levels, scales = quantize_weight_blocked(layer.weight_array(), bits, 1, block)
        base = weight.name or layer.name
        q_value = self._constant(f"{base}.w{bits}", levels, weight_grid(bits).container, graph)
        s_value = self._constant(f"{base}.w{bits}.scale", scales, graph=graph)
        attributes = {
            "gather_axis": 0,
            "quantize_axis": 1,
            "block_size": block,
            "bits": weight_grid(bits).width,
        }
        _replace_node(
            node,
            ir.node(
                "GatherBlockQuantized",
                [q_value, node.inputs[1], s_value],
                attributes,
                domain="com.microsoft",
            ),
        )
        self._drop_if_unused(weight)

    def _gather_rows_then_scale(self, layer: Layer, bits: int) -> None:
        """An embedding table: gather the int8 rows first, then scale only those rows.

        A DequantizeLinear in front of the Gather would turn the whole table back into floats on
        every run (MiniLM: 2.2x slower than float). Gathering the integers and their per-row
        scales, then ``float(q) * s``, computes the same float32 numbers for the rows looked up.
        """
        node = layer.node
        weight = layer.weight
        graph = node.graph
        assert graph is not None
        q, scales = quantize_weight(layer.weight_array(), bits, 0)
        base = weight.name or layer.name
        node.replace_input_with(
            0, self._constant(f"{base}.w{bits}", q, weight_grid(bits).container, graph)
        )
        self._drop_if_unused(weight)
        rows = node.outputs[0]
        uses = list(rows.uses())
        output_name = rows.name if rows.is_graph_output() else None
        column = scales.reshape(-1, *([1] * (q.ndim - 1)))
        row_scales = ir.node(
            "Gather",
            [self._constant(f"{base}.w{bits}.scale", column, graph=graph), node.inputs[1]],
            {"axis": 0},
        )
        self._add(row_scales, f"{base}.w{bits}.row_scale")
        levels = ir.node(
            "DequantizeLinear",
            [rows, self._constant(f"{base}.w{bits}.unit", np.array(1.0, np.float32), graph=graph)],
        )
        self._add(levels, f"{base}.w{bits}.levels")
        scaled = ir.node("Mul", [levels.outputs[0], row_scales.outputs[0]])
        out = self._add(scaled, f"{base}.w{bits}.rows")
        out.dtype, out.shape = rows.dtype, rows.shape
        # A new type, not ``rows.dtype = ...``: onnx_ir's Model.clone() shares type objects, and setting
        # the dtype in place would retype the rows of the model this one was cloned from.
        rows.type = ir.TensorType(weight_grid(bits).container)
        graph.insert_after(node, [row_scales, levels, scaled])
        for use in uses:
            use.node.replace_input_with(use.idx, out)
        if output_name is not None:  # the model returns the rows: it keeps its output name
            graph.outputs[graph.outputs.index(rows)] = out
            rows.name = self._unique(f"{base}.w{bits}.int_rows")
            out.name = output_name

    def _dequantize_then_scale(
        self,
        base: str,
        bits: int,
        q_value: ir.Value,
        scales: np.ndarray,
        axis: int,
        rank: int,
        graph: ir.Graph,
    ) -> list[ir.Node]:
        """DequantizeLinear at unit scale, then a Mul by the per-channel scales.

        onnxruntime's QDQ fusion turns DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear into
        QLinearConv/QLinearMatMul without checking the weight type, and the session then fails to
        load because those kernels take no INT2 weights. A Mul between the weight's DQ and the layer
        hides the pattern; the numbers are the same (q * s in float32, as DequantizeLinear computes).
        """
        one = self._constant(f"{base}.w{bits}.unit", np.array(1.0, np.float32), graph=graph)
        levels = ir.node("DequantizeLinear", [q_value, one])
        self._add(levels, f"{base}.w{bits}.levels")
        shape = [1] * rank
        shape[axis] = -1
        s_value = self._constant(f"{base}.w{bits}.scale", scales.reshape(shape), graph=graph)
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
        z_value = self._constant(
            f"{base}.a{bits}.zp", np.array(zero_point, grid.numpy_dtype), grid.container
        )
        source = value
        nodes: list[ir.Node] = []
        if grid.narrow:
            lo = np.float32((grid.qmin - zero_point) * float(scale))
            hi = np.float32((grid.qmax - zero_point) * float(scale))
            clip = ir.node(
                "Clip",
                [
                    value,
                    self._constant(f"{base}.a{bits}.lo", np.array(lo)),
                    self._constant(f"{base}.a{bits}.hi", np.array(hi)),
                ],
            )
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
        if (
            bias is None
            or bias.ndim != 1
            or x_scale is None
            or w_scale is None
            or x_scale.size != 1
            or w_scale.ndim > 1
        ):
            return  # (a 2-D weight scale is a blocked layout: no scale per channel to put the bias on)
        scale = np.broadcast_to(
            np.float32(x_scale.reshape(())) * w_scale.astype(np.float32).reshape(-1), bias.shape
        )
        scale = np.maximum(scale, np.abs(bias).astype(np.float32) / np.float32(2**30)).astype(
            np.float32
        )
        q = np.rint(bias / scale).astype(np.int32)
        base = node.inputs[2].name or layer.name
        dq = ir.node(
            "DequantizeLinear",
            [
                self._constant(f"{base}.i32", q),
                self._constant(f"{base}.i32.scale", scale),
            ],  # zero point 0 by default
            {"axis": 0},
        )
        self._add(dq, f"{base}.i32.dq")
        self.graph.insert_before(node, dq)
        old = node.inputs[2]
        node.replace_input_with(2, dq.outputs[0])
        if old is not None and not old.uses() and old.is_initializer():
            self.graph.initializers.pop(old.name)
