"""Which nodes are quantizable layers, and where their weights are.

A layer is a node with a constant weight (DESIGN.md, "Quantizable layers"): Conv, ConvTranspose,
Gemm, MatMul with a constant operand, Gather over a constant table (embeddings), LSTM and GRU.
Knowing the weight's input slot and its output-channel axis here, once, keeps every pass that
quantizes weights (sensitivity, cost, lowering) agreeing on the same per-channel grid.
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
    #: The input whose activation quantizer this layer owns; None for layers fed by indices (Gather).
    activation_index: int | None

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
    """The numbers of a constant value (initializer), or None if it is computed at run time."""
    if value is None or value.const_value is None:
        return None
    if value.is_graph_input():
        return None  # an initializer that is also a graph input can be overridden by the caller
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


def quantizable_layers(graph: ir.Graph) -> list[Layer]:
    """The quantizable layers of ``graph`` in topological order (subgraphs are not entered)."""
    layers = []
    for node in topological_nodes(graph):
        slot = _slot(node)
        if slot is None:
            continue
        weight_index, axis, act_index = slot
        weight = constant_array(node.inputs[weight_index])
        if weight is None or weight.ndim < 2 or not np.issubdtype(weight.dtype, np.floating):
            continue
        layers.append(Layer(node, weight_index, axis % weight.ndim, act_index))
    return layers
