"""Writing dynamic activation ranges (``w8adyn``): part of ``emit.Emitter``, apart for its size.

A layer whose plan has a dynamic range reads its input through onnxruntime's
``DynamicQuantizeLinear`` (one per tensor, shared by the layers that read it so), then either
``quantize_dynamic``'s integer form — MatMulInteger on int8 [K, N] columns, Cast, Mul by the input
scale times the column scales, the Gemm's bias added — which onnxruntime fuses into
DynamicQuantizeMatMul (MatMulIntegerToFloat behind a shared quantizer), or a DequantizeLinear in
front of a float kernel. An LSTM becomes onnxruntime's DynamicQuantizeLSTM, which quantizes its
input and hidden state itself.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mpqc.ir.layers import Layer, constant_array
from mpqc.passes.lib.dynamic_lstm import dynamic_quantize_lstm
from mpqc.passes.lib.grid import quantize_lstm_weight, quantize_weight
from mpqc.passes.lib.layout import kn_weight
from mpqc.passes.lib.plan import LayerPlan

__all__ = ["DynamicRanges", "replace_node"]


def replace_node(old: ir.Node, new: ir.Node, before: list[ir.Node] | None = None) -> None:
    """Put ``new`` where ``old`` was: same name, output names, annotations, uses and graph
    outputs, output by output (``before``: nodes computing ``new``'s inputs, inserted first)."""
    graph = old.graph
    assert graph is not None
    graph.insert_before(old, [*(before or []), new])
    for was, now in zip(old.outputs, new.outputs, strict=True):
        # (type, not dtype: an untyped value stays untyped)
        now.type, now.shape = was.type, was.shape
        was.replace_all_uses_with(now, replace_graph_outputs=True)
    new.name = old.name or ""
    new.meta.update(old.meta)
    new.metadata_props.update(old.metadata_props)
    graph.remove(old, safe=True)
    for was, now in zip(old.outputs, new.outputs, strict=True):
        now.name, was.name = was.name, None


class DynamicRanges:
    """The dynamic-range half of ``Emitter`` (which provides the naming, constants and placement
    these methods use)."""

    graph: ir.Graph
    #: DynamicQuantizeLinear outputs (levels, scale, zero point) per tensor they quantize.
    dynamic: dict[tuple[int, int], tuple[ir.Value, ir.Value, ir.Value]]
    activations: dict[tuple[int, int, int], ir.Value]

    def _dynamic_quantizer(
        self, value: ir.Value, anchor: ir.Node
    ) -> tuple[ir.Value, ir.Value, ir.Value]:
        """The DynamicQuantizeLinear of ``value`` (levels, scale, zero point), one per tensor."""
        key = (id(value), self._scope(value, anchor))
        if key not in self.dynamic:
            node = ir.node("DynamicQuantizeLinear", [value], num_outputs=3)
            base = value.name or "act"
            for out, part in zip(node.outputs, ("q", "scale", "zp"), strict=True):
                out.name = self._unique(f"{base}.adyn.{part}")
            node.name = node.outputs[0].name
            node.outputs[0].dtype = node.outputs[2].dtype = ir.DataType.UINT8
            node.outputs[0].shape = value.shape
            node.outputs[1].dtype = ir.DataType.FLOAT
            self._place(value, [node], anchor)
            self.dynamic[key] = tuple(node.outputs)  # type: ignore[assignment]
        return self.dynamic[key]

    def quantize_input_dynamic(self, layer: Layer) -> None:
        """A range measured on every run in front of a float kernel: DynamicQuantizeLinear then
        DequantizeLinear (shared by the layers reading the tensor this way)."""
        value = layer.activation
        assert value is not None and layer.activation_index is not None
        key = (id(value), -1, self._scope(value, layer.node))
        if key not in self.activations:
            q, scale, zero_point = self._dynamic_quantizer(value, layer.node)
            dq = ir.node("DequantizeLinear", [q, scale, zero_point])
            out = self._add(dq, f"{value.name or 'act'}.adyn.dq")
            out.dtype, out.shape = value.dtype or ir.DataType.FLOAT, value.shape
            self._place(q, [dq], layer.node)
            self.activations[key] = out
        layer.node.replace_input_with(layer.activation_index, self.activations[key])

    def matmul_integer(self, layer: Layer, plan: LayerPlan) -> None:
        """Replace a MatMul or plain Gemm by ``quantize_dynamic``'s form, which onnxruntime fuses
        into DynamicQuantizeMatMul: MatMulInteger of the input's dynamic levels and the int8
        [K, N] weight, Cast to float, times the input scale times the column scales (and the
        Gemm's bias added)."""
        node, weight, value = layer.node, layer.weight, layer.activation
        assert value is not None
        q, scale, zero_point = self._dynamic_quantizer(value, node)
        levels, scales = quantize_weight(kn_weight(layer), plan.grid_bits, 1)
        base = weight.name or layer.name
        w_value = self._constant(f"{base}.w{plan.grid_bits}", levels, ir.DataType.INT8)
        s_value = self._constant(f"{base}.w{plan.grid_bits}.scale", scales)
        product = ir.node("MatMulInteger", [q, w_value, zero_point])
        self._add(product, f"{layer.name}.int32")
        cast = ir.node("Cast", [product.outputs[0]], {"to": int(ir.DataType.FLOAT)})
        self._add(cast, f"{layer.name}.float")
        combined = ir.node("Mul", [scale, s_value])
        self._add(combined, f"{layer.name}.scale")
        chain = [product, cast, combined]
        result = ir.node("Mul", [cast.outputs[0], combined.outputs[0]])
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        if bias is not None:
            self._add(result, f"{layer.name}.scaled")
            chain.append(result)
            result = ir.node("Add", [result.outputs[0], bias])
        replace_node(node, result, chain)
        self._drop_if_unused(weight)

    def dynamic_lstm(self, layer: Layer, plan: LayerPlan) -> None:
        """Replace an LSTM by onnxruntime's DynamicQuantizeLSTM (``quantize_dynamic``'s form):
        its inputs, then W and R as int8 [D, K, 4H] with their scales and zero points per
        direction and gate column; its attributes but ``layout`` (time-major only)."""
        node = layer.node
        graph = node.graph
        assert graph is not None
        quantized = {}
        for index in (layer.weight_index, *layer.other_weight_indices):
            weight = node.inputs[index]
            assert weight is not None
            array = constant_array(weight)
            assert array is not None
            levels, scales = quantize_lstm_weight(array, plan.grid_bits)
            base = f"{weight.name or layer.name}.lstm{plan.grid_bits}"
            quantized[index] = (
                self._constant(base, levels, ir.DataType.INT8, graph),
                self._constant(f"{base}.scale", scales, graph=graph),
                self._constant(f"{base}.zp", np.zeros(scales.shape, np.int8), graph=graph),
            )
        replacement = dynamic_quantize_lstm(node, quantized)
        weights = [node.inputs[i] for i in (layer.weight_index, *layer.other_weight_indices)]
        replace_node(node, replacement)
        for weight in weights:
            assert weight is not None
            self._drop_if_unused(weight)
