"""Dead code elimination that reaches the initializers of If/Loop/Scan bodies.

onnx_ir's ``RemoveUnusedNodesPass`` removes unused nodes everywhere but unused initializers only
from the main graph. Bodies hold initializers too (lifted Constant nodes, folded weights: a
BatchNorm folded into a body's Conv leaves the old weight unread), and a stale copy of a weight in
a body is bytes the written model carries for nothing.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

__all__ = ["RemoveUnusedPass"]


class RemoveUnusedPass(common.RemoveUnusedNodesPass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = super().call(model)
        removed = 0
        for body in model.graph.subgraphs():
            keep = {*body.inputs, *body.outputs}
            for name, value in list(body.initializers.items()):
                if not value.uses() and value not in keep:
                    del body.initializers[name]
                    removed += 1
        return ir.passes.PassResult(model, modified=result.modified or removed > 0)
