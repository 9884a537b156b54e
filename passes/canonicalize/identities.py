"""Identity elimination that never renames a graph output.

onnx_ir's ``IdentityEliminationPass`` removes ``y = Identity(x)`` and, when ``y`` is a graph
output, renames ``x`` to ``y``. When ``x`` is a graph output as well, that rename takes the model's
other output name away (outputs ``v0, v2`` become ``v2, v2``), and callers fetch outputs by name.
Such a node is kept, as onnx_ir already keeps it when ``x`` is a graph input; every other case is
onnx_ir's.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

__all__ = ["OutputPreservingIdentityEliminationPass"]


class OutputPreservingIdentityEliminationPass(common.IdentityEliminationPass):
    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        source = node.inputs[0] if len(node.inputs) == 1 else None
        if (
            node.op_type == "Identity"
            and source is not None
            and source.is_graph_output()
            and node.outputs[0].is_graph_output()
        ):
            return False
        return super()._try_eliminate_identity_node(node)
