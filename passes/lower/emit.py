"""Writing a lowering plan into the graph: the Q/DQ nodes and low-bit tensors of ``lower-qdq``.

``Emitter`` turns each layer's plan (``passes/lib/plan``) into nodes: the weight in its form
(DequantizeLinear per channel or per block, unit scale then a Mul, MatMulNBits,
GatherBlockQuantized, int8 rows scaled after a Gather, int8 columns read by MatMulInteger behind a
dynamic quantizer), activation quantizers shared by (tensor, bits), integer kernels' output
quantizers, and int32 biases. It decides nothing the plan decides; it
only names, types and places what the plan asks for.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mpqc.ir import annotations
from mpqc.ir.graphs import fresh_name, return_instead, scope_names
from mpqc.ir.layers import Layer, constant_array
from mpqc.passes.lib.grid import (
    activation_grid,
    activation_qparams,
    quantize_weight,
    quantize_weight_blocked,
    weight_grid,
)
from mpqc.passes.lib.layout import block_axis, kn_weight
from mpqc.passes.lib.matmul_nbits import pack_matmul_nbits
from mpqc.passes.lib.plan import LayerPlan, WeightForm, body_result, int32_bias, output_target
from mpqc.passes.lower.dynamic import DynamicRanges, replace_node

__all__ = ["Emitter"]


def _dequantize_scale(value: ir.Value | None) -> np.ndarray | None:
    """The scale of the DequantizeLinear that produces ``value``, or None if it is not one."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    return constant_array(producer.inputs[1])


class Emitter(DynamicRanges):
    """Inserts Q/DQ into one graph, sharing quantizers keyed by (tensor, bits)."""

    def __init__(self, graph: ir.Graph, act_signed: bool) -> None:
        self.graph = graph
        self.act_signed = act_signed
        self.weights: dict[tuple[int, ...], tuple[ir.Value, np.ndarray]] = {}
        self.nbits_scales: dict[tuple[int, ...], ir.Value] = {}
        #: (value, bits, scope: see ``_scope``) -> the DQ output.
        self.activations: dict[tuple[int, int, int], ir.Value] = {}
        self.dynamic: dict[tuple[int, int], tuple[ir.Value, ir.Value, ir.Value]] = {}
        #: Nodes this lowering inserted for activations: they read the float tensor on purpose.
        self.inserted: set[int] = set()
        self.names = scope_names(graph)

    def _unique(self, base: str) -> str:
        return fresh_name(base, self.names)

    def _constant(
        self,
        base: str,
        array: np.ndarray,
        dtype: ir.DataType | None = None,
        graph: ir.Graph | None = None,
    ) -> ir.Value:
        """A new initializer of ``graph`` (default: the main graph), uniquely named after
        ``base``."""
        name = self._unique(base)
        tensor = (
            ir.tensor(array, name=name) if dtype is None else ir.Tensor(array, dtype, name=name)
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
        """Name ``node``'s output uniquely and the node after it (ONNX keeps the namespaces
        apart)."""
        out = node.outputs[0]
        out.name = self._unique(name)
        node.name = out.name
        return out

    # -- weights ---------------------------------------------------------------------------

    def weight(self, layer: Layer, plan: LayerPlan) -> None:
        """The layer's weight (and an RNN's recurrence weight) in the plan's form."""
        form, bits = plan.form, plan.grid_bits
        if form is WeightForm.FLOAT:
            return
        if form is WeightForm.MATMUL_NBITS:
            assert plan.accuracy_level is not None
            self.matmul_nbits(layer, bits, plan.block, plan.accuracy_level)
        elif form is WeightForm.GATHER_BLOCK_QUANTIZED:
            self._gather_block_quantized(layer, bits, plan.block)
        elif form is WeightForm.GATHER_ROWS:
            self._gather_rows_then_scale(layer, bits)
        else:
            self._replace_weight(layer, layer.weight_index, bits, plan.block, form)
            for index in layer.other_weight_indices:
                assert plan.recurrence_form is not None
                self._replace_weight(layer, index, bits, 0, plan.recurrence_form)

    def _replace_weight(
        self, layer: Layer, index: int, bits: int, block: int, form: WeightForm
    ) -> None:
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
            elif form is WeightForm.UNIT_SCALE_MUL:
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
        """Remove the float weight once nothing reads it: an initializer, or the Constant node
        holding it."""
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
        replace_node(node, ir.node("MatMulNBits", inputs, attributes, domain="com.microsoft"))
        self._drop_if_unused(weight)
        if bias is not None:
            self._drop_if_unused(bias)

    def _gather_block_quantized(self, layer: Layer, bits: int, block: int) -> None:
        """Replace a table lookup by onnxruntime's GatherBlockQuantized over the INT4 table in
        blocks along the embedding axis (zero point 0, the default for a signed table)."""
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
        replace_node(
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
        # A new type, not ``rows.dtype = ...``: onnx_ir's Model.clone() shares type objects, and
        # setting the dtype in place would retype the rows of the model this one was cloned from.
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
        """DequantizeLinear at unit scale, then a Mul by the per-channel scales (the plan's
        ``unit-scale-mul`` form, whose docstring says why); the numbers are the same (q * s in
        float32, as DequantizeLinear computes)."""
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
        """The DQ output for ``value`` at ``bits`` (created on first use, shared as ``_scope``
        says); None without a range."""
        key = (id(value), bits, self._scope(value, anchor))
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
        self._place(value, nodes, anchor)
        self.activations[key] = out
        return out

    @staticmethod
    def _scope(value: ir.Value, anchor: ir.Node) -> int:
        """Where quantizers of ``value`` read by ``anchor`` are shared: 0 when the value is made
        in ``anchor``'s graph, whose layers share them; else ``anchor``'s body, which quantizes a
        value of an enclosing graph itself: onnxruntime fuses a DequantizeLinear into an integer
        kernel only within one graph (the numbers are the same either way)."""
        producer = value.producer()
        home = producer.graph if producer is not None else value.graph
        return 0 if home is None or home is anchor.graph else id(anchor.graph)

    def _place(self, value: ir.Value, nodes: list[ir.Node], anchor: ir.Node) -> None:
        """Insert ``nodes`` reading ``value`` where ``_scope`` shares them: right after the value's
        producer (a graph input: before ``anchor``), or, for a value of an enclosing graph, in
        ``anchor``'s body before it."""
        producer, local = value.producer(), anchor.graph
        assert local is not None
        if producer is not None and not self._scope(value, anchor):
            local.insert_after(producer, nodes)
        else:
            local.insert_before(anchor, nodes)
        self.inserted.update(id(n) for n in nodes)

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
        if body_result(layer, target):
            return_instead(target, quantized)

    def quantize_bias(self, layer: Layer) -> None:
        """A bias the plan makes int32 (``plan.int32_bias``), behind a DequantizeLinear, once the
        layer's input arrives from a DequantizeLinear with one scale."""
        node = layer.node
        bias = constant_array(node.inputs[2])
        x_scale = _dequantize_scale(node.inputs[0])
        w_scale = _dequantize_scale(node.inputs[1])
        if bias is None or x_scale is None or w_scale is None or x_scale.size != 1:
            return
        q, scale = int32_bias(bias, x_scale.reshape(()), w_scale)
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
        assert node.graph is not None
        node.graph.insert_before(node, dq)
        old = node.inputs[2]
        node.replace_input_with(2, dq.outputs[0])
        if old is not None:
            self._drop_if_unused(old)
