"""Graph views: deterministic topological order and a networkx view of the data flow.

The IR keeps nodes in insertion order, which passes may leave out of topological order. Analyses
and the printer need a stable order, so ties between independent nodes are broken by their position
in the graph (analyses: layers keep the order the exporter wrote them in) or by their output names
(the printer: the text must not depend on the order passes inserted nodes in).
"""

from __future__ import annotations

import networkx as nx
import onnx_ir as ir

__all__ = ["data_flow", "fresh_name", "return_instead", "scope_names", "topological_nodes"]


def data_flow(graph: ir.Graph) -> nx.DiGraph:
    """A DiGraph over node positions, with an edge producer -> consumer for every used value.

    Node attributes: ``node`` (the ``ir.Node``). Edge attribute: ``values`` (names carried).
    Uses of a value inside a subgraph count as uses by the node that owns the subgraph, so the
    order respects captures of outer values.
    """
    position = {id(node): i for i, node in enumerate(graph)}
    flow = nx.DiGraph()
    for i, node in enumerate(graph):
        flow.add_node(i, node=node)
    for i, node in enumerate(graph):
        for value in _consumed_values(node):
            producer = value.producer()
            j = position.get(id(producer)) if producer is not None else None
            if j is None or j == i:
                continue
            if flow.has_edge(j, i):
                flow.edges[j, i]["values"].append(value.name)
            else:
                flow.add_edge(j, i, values=[value.name])
    return flow


def topological_nodes(graph: ir.Graph, *, by_name: bool = False) -> list[ir.Node]:
    """Nodes of ``graph`` in topological order, ties broken by their position in the graph.

    With ``by_name``, ties between independent nodes are broken by their output names first, which
    do not depend on the order in which passes happened to insert nodes (the printer needs that:
    the same graph must print the same text however it was built).
    """
    flow = data_flow(graph)
    if not by_name:
        return [flow.nodes[i]["node"] for i in nx.lexicographical_topological_sort(flow)]

    def name_key(i: int) -> tuple[tuple[str, ...], str, int]:
        node = flow.nodes[i]["node"]
        return tuple(v.name or "" for v in node.outputs), node.name or "", i

    return [flow.nodes[i]["node"] for i in nx.lexicographical_topological_sort(flow, key=name_key)]


def _consumed_values(node: ir.Node) -> list[ir.Value]:
    values = [v for v in node.inputs if v is not None]
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            values.extend(_captured(attr.value))
        elif attr.type == ir.AttributeType.GRAPHS:
            for sub in attr.value:
                values.extend(_captured(sub))
    return values


def _captured(graph: ir.Graph) -> list[ir.Value]:
    """Values a subgraph reads from enclosing graphs (not its own inputs, initializers or
    outputs)."""
    own: set[int] = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
    for node in graph:
        own.update(id(v) for v in node.outputs)
    captured = []
    for node in graph:
        for value in _consumed_values(node):
            if id(value) not in own:
                captured.append(value)
    return captured


def return_instead(old: ir.Value, new: ir.Value) -> None:
    """Make the graph that computes ``old`` return ``new`` wherever it returned ``old``."""
    producer = old.producer()
    assert producer is not None and producer.graph is not None
    outputs = producer.graph.outputs
    for index, value in enumerate(outputs):
        if value is old:
            outputs[index] = new


def scope_names(graph: ir.Graph) -> set[str]:
    """Every value name of ``graph`` and of its bodies: ONNX names are unique across scopes, so a
    name made for one graph must not repeat one in another (``fresh_name``)."""
    return {
        name
        for g in (graph, *graph.subgraphs())
        for name in (
            *g.initializers,
            *(v.name for n in g for v in n.outputs),
            *(v.name for v in g.inputs),
        )
        if name
    }


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... : the first not in ``taken``, which it joins."""
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name
