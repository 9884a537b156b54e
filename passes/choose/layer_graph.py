"""What a strategy may know of the layers beyond their costs and damage: how they connect, and
HAQ's per-layer descriptors.

NEMO's graph-network policy passes messages along the edges and reads the descriptors, and HAQ's
agent observes each layer's descriptor; both are facts of the graph, read once when the search
problem is built.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mpqc.ir.graphs import data_flow
from mpqc.ir.layers import Layer

__all__ = ["layer_edges", "layer_features"]


def layer_edges(model: ir.Model, layers: list[Layer]) -> tuple[tuple[int, int], ...]:
    """(i, j) when layer j reads, through non-layer ops only, what layer i computes. A layer inside
    an If/Loop/Scan body stands for the main-graph node holding it: it reads what that node reads
    and feeds what that node feeds (edges inside a body are not drawn)."""
    flow = data_flow(model.graph)
    index_of = {id(flow.nodes[n]["node"]): n for n in flow.nodes}
    position: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        outermost = layer.scope[0][0] if layer.scope else layer.node
        position.setdefault(index_of[id(outermost)], []).append(i)
    edges = set()
    for start, sources in position.items():
        stack = list(flow.successors(start))
        seen = set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in position:
                edges.update((i, j) for i in sources for j in position[node])
            else:
                stack.extend(flow.successors(node))
    return tuple(sorted(edges))


def layer_features(model: ir.Model, layers: list[Layer]) -> np.ndarray:
    """HAQ's descriptor columns: c_in, c_out, stride, kernel, #params, input h*w, depthwise."""
    rows = []
    for layer in layers:
        weight = layer.weight_array()
        node = layer.node
        groups = node.attributes.get_int("group", 1) if node.op_type == "Conv" else 1
        kernel = int(np.prod(weight.shape[2:])) if node.op_type in ("Conv", "ConvTranspose") else 1
        strides = (
            node.attributes.get_ints("strides", [1])
            if node.op_type in ("Conv", "ConvTranspose")
            else [0]
        )
        c_out = weight.shape[layer.channel_axis]
        c_in = weight.size // max(c_out, 1) // max(kernel, 1) * groups
        shape = node.inputs[0].shape if node.inputs[0] is not None else None
        spatial = [d for d in (shape or [])[2:] if isinstance(d, int)]
        rows.append(
            [
                c_in,
                c_out,
                max(strides),
                kernel,
                weight.size,
                int(np.prod(spatial)) if spatial else 1,
                float(groups > 1 and groups == c_in),
            ]
        )
    return np.asarray(rows, dtype=np.float64)
