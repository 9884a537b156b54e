"""Quantized layers of a float16/bfloat16 model compute in float32, between Casts.

QuantizeLinear takes float32 only before opset 19, and where opset 19 allows a float16 scale
onnxruntime's CPU provider fuses nothing: a float16 DequantizeLinear -> Conv -> QuantizeLinear
runs as DequantizeLinear, Cast, float Conv, Cast (no QLinearConv), and its int32 bias would sit
at s_x·s_w, often below float16's normal range. So a layer that is lowered in a model whose float
tensors are another type (float16, bfloat16, double) is *widened*: its weight and its 1-D Conv/Gemm
bias become float32 constants (the lowering replaces them anyway), every other float input arrives
through a Cast to float32, and its outputs are float32 with a Cast back to the model's type for
every reader outside. The Relu that carries a layer's output quantizer (``output_target``) is
widened with it. Inside, the layer is an ordinary float32 layer: the plan, the emitter and the
fusion onnxruntime performs are those of a float32 model, and two widened layers in a row read
each other's float32 tensors with no Cast between them (so their quantizers are shared and the
integer kernels chain).

``lower-qdq`` widens the layers it lowers and the evaluator widens every layer of its fake-quant
graph, so both compute a quantized layer the same way. A layer a configuration leaves float is
widened in the evaluator only: it computes in float32 there and in the model's own type in the
written file, a difference of the float type's rounding, far below any quantizer's.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from mpqc.ir import annotations
from mpqc.ir.graphs import fresh_name, scope_names
from mpqc.ir.layers import Layer, constant_array, node_name
from mpqc.passes.lib.plan import output_target

__all__ = ["NARROW_FLOATS", "widen_to_float32"]

#: Float tensor types a lowered layer is widened from.
NARROW_FLOATS = frozenset({ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


def _island(layer: Layer) -> list[ir.Node]:
    """The layer's node and the Relu that carries its output quantizer, if any."""
    nodes = [layer.node]
    target = output_target(layer)
    producer = target.producer() if target is not None else None
    if producer is not None and producer is not layer.node:
        nodes.append(producer)
    return nodes


def _constant_slots(layer: Layer) -> set[int]:
    """Inputs that become float32 constants: the weights, and a Conv/Gemm's 1-D bias (which the
    plan makes int32 or counts as float32)."""
    slots = {layer.weight_index, *layer.other_weight_indices}
    node = layer.node
    if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2:
        bias = constant_array(node.inputs[2])
        if bias is not None and bias.ndim == 1:
            slots.add(2)
    return slots


class _Widener:
    def __init__(self) -> None:
        self.constants: dict[tuple[int, int], ir.Value] = {}
        self.casts: dict[tuple[int, int], ir.Value] = {}
        #: The float32 value each Cast back to a narrow type reads, by the Cast's id.
        self.narrowing: dict[int, ir.Value] = {}
        self.members: set[int] = set()
        self.names: dict[int, set[str]] = {}

    def widen(self, layer: Layer) -> None:
        narrow = _narrow_type(layer)
        if narrow is None:
            return
        # A layer is known by its node's name or else its first output's, which may be renamed here.
        layer.node.name = node_name(layer.node)
        nodes = _island(layer)
        self.members.update(id(n) for n in nodes)
        constants = _constant_slots(layer)
        for node in nodes:
            for index, value in enumerate(node.inputs):
                if value is None or value.dtype not in NARROW_FLOATS or value.producer() in nodes:
                    continue
                if node is layer.node and index in constants:
                    wide = self._constant(value, node)
                else:
                    wide = self._cast_up(value, node)
                node.replace_input_with(index, wide)
                _drop_if_unused(value)
        for node in nodes:
            for out in node.outputs:
                self._narrow_readers(out, node, out.dtype or narrow)

    def _unique(self, graph: ir.Graph, base: str) -> str:
        taken = self.names.get(id(graph))
        if taken is None:
            taken = self.names[id(graph)] = scope_names(graph)
        return fresh_name(base, taken)

    def _constant(self, value: ir.Value, node: ir.Node) -> ir.Value:
        graph = node.graph
        assert graph is not None
        key = (id(value), id(graph))
        if key not in self.constants:
            array = constant_array(value)
            assert array is not None
            name = self._unique(graph, f"{value.name or 'weight'}.f32")
            wide = ir.Value(
                name=name,
                const_value=ir.tensor(array.astype(np.float32), name=name),
                shape=ir.Shape(array.shape),
                type=ir.TensorType(ir.DataType.FLOAT),
            )
            graph.register_initializer(wide)
            self.constants[key] = wide
        return self.constants[key]

    def _cast_up(self, value: ir.Value, node: ir.Node) -> ir.Value:
        """``value`` in float32: the float32 tensor a widened layer narrowed it from, or a Cast."""
        producer = value.producer()
        if producer is not None and id(producer) in self.narrowing:
            return self.narrowing[id(producer)]
        graph = node.graph
        assert graph is not None
        key = (id(value), id(graph))
        if key not in self.casts:
            cast = ir.node("Cast", [value], {"to": ir.DataType.FLOAT})
            out = cast.outputs[0]
            out.name = cast.name = self._unique(graph, f"{value.name or 'x'}.f32")
            out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), value.shape
            observed = annotations.CALIB_RANGE.get(value)
            if observed is not None:  # the quantizer in front of the layer reads the Cast
                annotations.CALIB_RANGE.set(out, observed)
            if producer is not None and producer.graph is graph:
                graph.insert_after(producer, cast)
            else:
                graph.insert_before(node, cast)
            self.casts[key] = out
        return self.casts[key]

    def _narrow_readers(self, out: ir.Value, node: ir.Node, narrow: ir.DataType) -> None:
        """Make ``out`` float32 and give every reader outside the islands a Cast back."""
        out.type = ir.TensorType(ir.DataType.FLOAT)  # a new type: clones share type objects
        readers = [use for use in out.uses() if id(use.node) not in self.members]
        if not readers and not out.is_graph_output():
            return
        graph = node.graph
        assert graph is not None
        cast = ir.node("Cast", [out], {"to": narrow})
        back = cast.outputs[0]
        back.type, back.shape = ir.TensorType(narrow), out.shape
        graph.insert_after(node, cast)
        for use in readers:
            use.node.replace_input_with(use.idx, back)
        name = out.name
        back.name = cast.name = self._unique(graph, f"{name or 'y'}.narrow")
        if out.is_graph_output():  # the model's output keeps its name and type
            graph.outputs[graph.outputs.index(out)] = back
            out.name, back.name = back.name, name
        self.narrowing[id(cast)] = out

    def drop_unused_casts(self) -> None:
        """Casts back that later widened layers bypassed."""
        for wide in self.narrowing.values():
            for use in list(wide.uses()):
                cast, back = use.node, use.node.outputs[0]
                if id(cast) in self.narrowing and not back.uses() and not back.is_graph_output():
                    assert cast.graph is not None
                    cast.graph.remove(cast, safe=True)


def _narrow_type(layer: Layer) -> ir.DataType | None:
    """The float type other than float32 that the layer computes in, or None."""
    node = layer.node
    for value in (node.outputs[0], layer.activation, layer.weight):
        if value is not None and value.dtype is not None:
            return value.dtype if value.dtype in NARROW_FLOATS else None
    return None


def _drop_if_unused(value: ir.Value) -> None:
    """Remove a narrow constant nothing reads any more (an initializer or its Constant node)."""
    if value.uses() or value.is_graph_output() or value.is_graph_input():
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is not None:
        producer.graph.remove(producer, safe=True)
    elif value.is_initializer() and value.graph is not None:
        value.graph.initializers.pop(value.name)


def widen_to_float32(layers: Iterable[Layer]) -> None:
    """Widen each of ``layers`` (in topological order) whose float tensors are narrower or wider
    than float32 (see the module docstring)."""
    widener = _Widener()
    for layer in layers:
        widener.widen(layer)
    widener.drop_unused_casts()
