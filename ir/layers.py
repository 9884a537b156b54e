"""Which nodes are quantizable layers, and where their weights are.

A layer is a node with a constant weight (DESIGN.md, "Quantizable layers"): Conv, ConvTranspose,
Gemm, MatMul with a constant operand, Gather over a constant table (embeddings), LSTM and GRU.
Knowing the weight's input slot and its output-channel axis here, once, keeps every pass that
quantizes weights (sensitivity, cost, lowering) agreeing on the same per-channel grid. An LSTM's or
GRU's recurrence weight R is a second weight of the same layer, quantized at the same bits
(``other_weight_indices``), so the search sees one choice per recurrent layer.

Layers inside ``If``/``Loop``/``Scan`` bodies are layers like any other (the analyses reach their
tensors through ``passes/lib/bodies.py``); each knows the chain of bodies it sits in (``scope``),
and its name says so, readable and stable whatever the exporter named the nodes of each body:
``If_0/then/Conv_3``, ``Loop_2/body/MatMul_1`` (node names repeat across bodies, scoped names do
not). They are listed where their host stands in the enclosing graph's order, so "first" and "last"
layer keep meaning what runs first and last.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx_ir as ir

from mpqc.ir.graphs import topological_nodes

__all__ = [
    "Layer",
    "bodies",
    "constant_array",
    "near_names",
    "node_name",
    "quantizable_layers",
    "scoped_name",
    "scoped_nodes",
]


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
    #: The If/Loop/Scan nodes whose bodies hold this layer, outermost first, each with the name of
    #: the attribute holding the body (``then_branch``, ``else_branch``, ``body``); empty in the
    #: main graph.
    scope: tuple[tuple[ir.Node, str], ...] = ()

    @property
    def host(self) -> ir.Node | None:
        """The node whose body holds this layer directly; None in the main graph."""
        return self.scope[-1][0] if self.scope else None

    @property
    def in_subgraph(self) -> bool:
        return bool(self.scope)

    @property
    def name(self) -> str:
        return scoped_name(self.scope, self.node)

    @property
    def output(self) -> ir.Value:
        """The first output the layer computes: an LSTM/GRU that omits its sequence output
        (only its last state read) computes the state."""
        return next((o for o in self.node.outputs if o.name), self.node.outputs[0])

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


#: How a scoped layer name spells the attribute holding a body.
_BODY_NAMES = {"then_branch": "then", "else_branch": "else"}


def node_name(node: ir.Node) -> str:
    """A node's name, else its first named output's (exporters leave nodes unnamed; an LSTM/GRU
    may omit its first output)."""
    return node.name or next((o.name for o in node.outputs if o.name), "?")


def scoped_name(scope: Sequence[tuple[ir.Node, str]], node: ir.Node) -> str:
    """``node``'s name prefixed with the bodies holding it (``If_0/then/Conv_3``)."""
    return "".join(
        f"{node_name(host)}/{_BODY_NAMES.get(attribute, attribute)}/" for host, attribute in scope
    ) + node_name(node)


def near_names(name: str, names: Iterable[str], count: int = 3) -> list[str]:
    """The names a user most likely meant by ``name``, which is none of ``names``: scoped names
    ending in it first (a body's node named without its scope, ``Conv_3`` for
    ``If_0/then/Conv_3``), then the closest spellings of the whole name and of its last part."""
    names = list(names)
    tail = name.rsplit("/", 1)[-1]
    tails: dict[str, list[str]] = {}
    for candidate in names:
        tails.setdefault(candidate.rsplit("/", 1)[-1], []).append(candidate)
    found = list(tails.get(tail, []))
    found += difflib.get_close_matches(name, names, n=count)
    for close in difflib.get_close_matches(tail, list(tails), n=count):
        found += tails[close]
    return list(dict.fromkeys(found))[:count]


def scoped_nodes(
    graph: ir.Graph, scope: tuple[tuple[ir.Node, str], ...] = ()
) -> Iterator[tuple[str, ir.Node]]:
    """(scoped name, node) of every node of ``graph`` and its bodies, each body after its host."""
    for node in graph:
        yield scoped_name(scope, node), node
        for attribute, body in bodies(node):
            yield from scoped_nodes(body, (*scope, (node, attribute)))


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


def _layer(node: ir.Node, scope: tuple[tuple[ir.Node, str], ...]) -> Layer | None:
    slot = _slot(node)
    if slot is None:
        return None
    weight_index, axis, act_index = slot
    weight = _float_weight(node.inputs[weight_index])
    if weight is None:
        return None
    others: tuple[int, ...] = ()
    if node.op_type in ("LSTM", "GRU") and _float_weight(node.inputs[2]) is not None:
        others = (2,)
    return Layer(node, weight_index, axis % weight.ndim, act_index, others, scope)


def bodies(node: ir.Node) -> list[tuple[str, ir.Graph]]:
    """(attribute name, body) of every graph ``node`` holds, in attribute order."""
    found = []
    for name, attribute in node.attributes.items():
        if attribute.type == ir.AttributeType.GRAPH:
            found.append((name, attribute.value))
        elif attribute.type == ir.AttributeType.GRAPHS:
            found += [(name, body) for body in attribute.value]
    return found


def quantizable_layers(graph: ir.Graph, subgraphs: bool = True) -> list[Layer]:
    """The quantizable layers of ``graph`` in topological order, those inside If/Loop/Scan bodies
    (recursively) where their host stands; ``subgraphs=False`` lists the graph's own only."""
    return _layers_in(graph, (), subgraphs)


def _layers_in(
    graph: ir.Graph, scope: tuple[tuple[ir.Node, str], ...], subgraphs: bool
) -> list[Layer]:
    layers = []
    for node in topological_nodes(graph):
        layer = _layer(node, scope)
        if layer is not None:
            layers.append(layer)
        if subgraphs:
            for attribute, body in bodies(node):
                layers += _layers_in(body, (*scope, (node, attribute)), True)
    return layers
