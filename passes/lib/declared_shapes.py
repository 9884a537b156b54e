"""Declared shapes the graph contradicts: found, and replaced by the shapes the graph computes.

An exporter may declare a shape that its graph does not compute: ddddocr's float model declares its
output ``387`` as ``[1, seqlen]``, a rank-2 tensor, where its last Reshape makes it rank 3
(``[T, 1, 8210]``). onnx's inference does not notice at the model's opset 12 (Reshape-5's inference
does not derive a rank from a computed shape), but Reshape-14's does: once the model is at opset 14
or later — exported so, or raised by the lowering for 4-bit weights — strict inference (which
``onnx.checker``'s full check and ``canonicalize`` run) fails on the stale declaration, and the
emitted model is refused by the checker.

``replace_contradicted_shapes`` finds such declarations (graph outputs and intermediate values,
bodies included) by inferring once without them, and replaces each shape inference contradicts — a
different rank, or a different static size of a dimension — by the inferred one. Shapes inference
does not contradict, including dimensions it cannot derive, are kept: they are the exporter's
knowledge.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common._c_api_utils import call_onnx_api

__all__ = ["replace_contradicted_shapes"]


def _infer(model: ir.Model, strict: bool) -> onnx.ModelProto:
    return call_onnx_api(
        lambda proto: onnx.shape_inference.infer_shapes(
            proto, check_type=False, strict_mode=strict, data_prop=True
        ),
        model,
    )


def _declared(model: ir.Model) -> dict[int, tuple[ir.Value, ir.Shape]]:
    values = [*model.graph.outputs]
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        values += node.outputs
    return {id(v): (v, v.shape) for v in values if v.shape is not None and v.name}


def _compatible(declared: ir.Shape, inferred: ir.Shape) -> bool:
    if len(declared) != len(inferred):
        return False
    return all(
        not (isinstance(a, int) and isinstance(b, int)) or a == b
        for a, b in zip(declared.dims, inferred.dims, strict=True)
    )


def _inferred_shapes(proto: onnx.ModelProto) -> dict[str, ir.Shape]:
    main = ir.serde.deserialize_model(proto).graph
    shapes: dict[str, ir.Shape] = {}
    for graph in (main, *main.subgraphs()):
        for value in (*graph.outputs, *(v for node in graph for v in node.outputs)):
            if value.name and value.shape is not None:
                shapes[value.name] = value.shape
    return shapes


def replace_contradicted_shapes(model: ir.Model) -> list[str]:
    """Replace the declared shapes of ``model``'s values that its graph contradicts by the inferred
    ones; their names (none when strict inference passes as declared)."""
    try:
        _infer(model, strict=True)
        return []
    except onnx.shape_inference.InferenceError:
        pass
    declared = _declared(model)
    for value, _ in declared.values():
        value.shape = None
    inferred = _inferred_shapes(_infer(model, strict=False))
    replaced = []
    for value, shape in declared.values():
        assert value.name is not None
        found = inferred.get(value.name)
        contradicted = found is not None and not _compatible(shape, found)
        value.shape = found if contradicted else shape
        if contradicted:
            replaced.append(value.name)
    return replaced
