"""Which nodes are quantizable layers, and where their weights are.

A layer is a node with a constant weight (DESIGN.md, "Quantizable layers"): Conv, ConvTranspose,
Gemm, MatMul with a constant operand, Gather over a constant table (embeddings), LSTM and GRU.
Knowing the weight's input slot and its output-channel axis here, once, keeps every pass that
quantizes weights (sensitivity, cost, lowering) agreeing on the same per-channel grid. An LSTM's or
GRU's recurrence weight R is a second weight of the same layer, quantized at the same bits
(``other_weight_indices``), so the search sees one choice per recurrent layer.

Layers inside ``If``/``Loop``/``Scan`` bodies are found only when asked (``subgraphs=True``) and say
so (``host``): their activations exist only inside the body, where onnxruntime cannot expose them
for calibration or evaluation, so the analysis passes work on the main graph's layers and lowering
treats body layers on their own (weights only).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from mpqc.ir.graphs import topological_nodes

__all__ = ["Layer", "quantizable_layers", "constant_array"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """A quantizable node: its weight slot, the weight's channel axis and its activation slot."""

    node: ir.Node
    weight_index: int
    channel_axis: int
    #: The input whose activation quantizer this layer owns; None for layers fed by indices
    #: (Gather).
    activation_index: int | None
    #: Further constant weights quantized at the layer's weight bits, same channel axis (an
    #: RNN's R).
    other_weight_indices: tuple[int, ...] = ()
    #: The main-graph node (If/Loop/Scan) whose body holds this layer; None in the main graph.
    host: ir.Node | None = None

    @property
    def in_subgraph(self) -> bool:
        return self.host is not None

    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name or "?"

    @property
    def weight(self) -> ir.Value:
        value = self.node.inputs[self.weight_index]
        assert value is not None
        return value

    @property
    def activation(self) -> ir.Value | None:
        if self.activation_index is None:
            return None
        return self.node.inputs[self.activation_index]

    def weight_array(self) -> np.ndarray:
        array = constant_array(self.weight)
        assert array is not None
        return array


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The numbers of a constant value — an initializer, or a ``Constant`` node's tensor (exporters
    put whole weights in them, also inside If/Loop/Scan bodies, where canonicalization does not
    reach) — or None if it is computed at run time."""
    if value is None:
        return None
    producer = value.producer()
    if (
        value.const_value is None
        and producer is not None
        and producer.op_type == "Constant"
        and producer.domain in ("", "ai.onnx")
    ):
        tensor = producer.attributes.get("value")
        return (
            tensor.value.numpy()
            if tensor is not None and tensor.type == ir.AttributeType.TENSOR
            else None
        )
    if value.const_value is None or value.is_graph_input():
        return None  # (an initializer that is also a graph input can be overridden by the caller)
    return value.const_value.numpy()


def _slot(node: ir.Node) -> tuple[int, int, int | None] | None:
    """(weight input, channel axis, activation input) for a quantizable op, else None."""
    op = node.op_type
    inputs = node.inputs
    if node.domain not in ("", "ai.onnx"):
        return None
    if op == "Conv" and len(inputs) >= 2:
        return 1, 0, 0
    if op == "ConvTranspose" and len(inputs) >= 2:
        return 1, 1, 0
    if op == "Gemm" and len(inputs) >= 2:
        trans_b = node.attributes.get_int("transB", 0)
        return 1, 0 if trans_b else 1, 0
    if op == "MatMul" and len(inputs) == 2:
        return 1, -1, 0
    if op == "Gather" and len(inputs) == 2 and node.attributes.get_int("axis", 0) == 0:
        return 0, 0, None
    if op in ("LSTM", "GRU") and len(inputs) >= 3:
        return 1, 1, 0
    return None


def _float_weight(value: ir.Value | None) -> np.ndarray | None:
    weight = constant_array(value)
    if weight is None or weight.ndim < 2 or not np.issubdtype(weight.dtype, np.floating):
        return None
    return weight


def _layers_of(graph: ir.Graph, host: ir.Node | None) -> list[Layer]:
    layers = []
    for node in topological_nodes(graph):
        slot = _slot(node)
        if slot is None:
            continue
        weight_index, axis, act_index = slot
        weight = _float_weight(node.inputs[weight_index])
        if weight is None:
            continue
        others: tuple[int, ...] = ()
        if node.op_type in ("LSTM", "GRU") and _float_weight(node.inputs[2]) is not None:
            others = (2,)
        layers.append(Layer(node, weight_index, axis % weight.ndim, act_index, others, host))
    return layers


def quantizable_layers(graph: ir.Graph, subgraphs: bool = False) -> list[Layer]:
    """The quantizable layers of ``graph`` in topological order.

    With ``subgraphs``, the layers inside every If/Loop/Scan body follow (recursively, each with its
    ``host``); without, bodies are not entered.
    """
    layers = _layers_of(graph, None)
    if subgraphs:
        for node in topological_nodes(graph):
            for attribute in node.attributes.values():
                bodies = (
                    attribute.value
                    if attribute.type == ir.AttributeType.GRAPHS
                    else [attribute.value]
                )
                for body in bodies:
                    if isinstance(body, ir.Graph):
                        layers += [
                            dataclasses.replace(layer, host=node)
                            for layer in quantizable_layers(body, True)
                        ]
    return layers
