"""Shape inference that leaves sequences, optionals and maps their own types.

onnx_ir's ``ShapeInferencePass`` (1.1) merges what onnx infers into the IR by dtype, and the dtype
of a ``seq(tensor(float))`` is its elements' ``float``: an untyped sequence came back typed as a
float tensor, a model onnxruntime refuses to load. Here a value that had no type keeps none (and
its shape) when the op that produces it cannot output a tensor at all (its schema's type
constraint allows only sequences, optionals or maps); every other value gets onnx_ir's merge.
A declared shape the graph contradicts is replaced by the inferred one first
(``passes/lib/declared_shapes.py``): onnx's strict inference would fail on it and leave every
shape as it was.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes import common

from mpqc.passes.lib.declared_shapes import replace_contradicted_shapes

__all__ = ["ShapeInferencePass"]


class ShapeInferencePass(common.ShapeInferencePass):
    #: Values whose declared shape the graph contradicted, replaced before inference (last run).
    contradicted: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.contradicted = replace_contradicted_shapes(model)
        untyped = [
            (value, value.shape)
            for node in ir.traversal.RecursiveGraphIterator(model.graph)
            for value in node.outputs
            if value.type is None
        ]
        result = super().call(model)
        for value, shape in untyped:
            if value.type is not None and not _may_be_a_tensor(model, value):
                value.type, value.shape = None, shape
        if self.contradicted:
            result = ir.passes.PassResult(model, True)
        return result


def _may_be_a_tensor(model: ir.Model, value: ir.Value) -> bool:
    """Whether the schema of ``value``'s producer allows a tensor at its output position."""
    node = value.producer()
    assert node is not None
    domain = "" if node.domain == "ai.onnx" else node.domain
    try:
        schema = onnx.defs.get_schema(node.op_type, model.opset_imports.get(domain, 1), domain)
    except onnx.defs.SchemaError:  # a custom op: onnx infers nothing for it anyway
        return True
    if not schema.outputs:
        return True
    formal = schema.outputs[min(value.index() or 0, len(schema.outputs) - 1)]
    allowed = next(
        (
            c.allowed_type_strs
            for c in schema.type_constraints
            if c.type_param_str == formal.type_str
        ),
        [formal.type_str],
    )
    return any(text.startswith("tensor(") for text in allowed)
