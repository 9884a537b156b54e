"""Identity elimination that keeps every graph output a value of its own graph, under its name.

onnx_ir's ``IdentityEliminationPass`` removes ``y = Identity(x)`` and, when ``y`` is a graph
output, renames ``x`` to ``y``. Two cases of that are wrong, and there the node is kept (as onnx_ir
already keeps it when ``x`` is an input or initializer of the graph):
- ``x`` is a graph output as well: the rename takes the model's other output name away (outputs
  ``v0, v2`` become ``v2, v2``), and callers fetch outputs by name;
- ``x`` is not computed in ``y``'s graph (an If or Loop body returning a value of the enclosing
  graph): the body would return the outer value directly, which onnxruntime refuses, and the outer
  value would be renamed after the body's output.
Every other case is onnx_ir's.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

__all__ = ["OutputPreservingIdentityEliminationPass"]


class OutputPreservingIdentityEliminationPass(common.IdentityEliminationPass):
    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        source = node.inputs[0] if len(node.inputs) == 1 else None
        if node.op_type == "Identity" and source is not None and node.outputs[0].is_graph_output():
            producer = source.producer()
            computed_here = producer is not None and producer.graph is node.graph
            if source.is_graph_output() or not computed_here:
                return False
        return super()._try_eliminate_identity_node(node)
