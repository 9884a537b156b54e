"""Raising a model's ai.onnx opset in place, for lowering passes that need newer types.

Per-channel DequantizeLinear needs opset 13, INT4/UINT4 need 21 and INT2/UINT2 need 25. The onnx
version converter knows every op's adapters; the converted graph replaces the model's graph. The
converter rebuilds nodes and values in its own C++ IR and drops their ``metadata_props`` (where the
annotations live), so they are carried over by name: values by their name, nodes by their name or
first output's name, both unique in an ONNX graph.

The converter reads a graph by the rules of its IR version, and below IR 4 an initializer exists
only if it is a graph input too; ``canonicalize`` takes initializers out of the inputs, so an IR 3
model (as exporters wrote them until 2018) must say IR 4 before anything reads it again
(``allow_initializers_apart``), or every weight is "undefined".
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from mpqc.ir.io import IR_INITIALIZERS_APART
from mpqc.passes.infra.base import PassInputError
from mpqc.passes.lib.declared_shapes import replace_contradicted_shapes

__all__ = ["ORT_MIN_OPSET", "allow_initializers_apart", "ensure_opset"]

#: The oldest ai.onnx opset onnxruntime has kernels for (Add-6, with its broadcast attribute, has
#: none): ``canonicalize`` upgrades older models to it.
ORT_MIN_OPSET = 7

#: Why mpqc asks for each opset (``ORT_MIN_OPSET``; passes/lib/grid.py's ``min_opset``).
_NEEDED_FOR = {
    ORT_MIN_OPSET: "onnxruntime runs no op older than opset 7",
    13: "per-channel QuantizeLinear/DequantizeLinear need opset 13",
    21: "4- or 16-bit types and blocked quantization need opset 21",
    25: "2-bit types need opset 25",
}


def allow_initializers_apart(model: ir.Model) -> bool:
    """Raise an IR 3 model to the first IR version whose initializers need not be graph inputs;
    True if it changed."""
    if model.ir_version >= IR_INITIALIZERS_APART:
        return False
    model.ir_version = IR_INITIALIZERS_APART
    return True


def ensure_opset(model: ir.Model, minimum: int) -> bool:
    """Raise the model's ai.onnx opset to at least ``minimum``; True if it changed."""
    current = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    if current >= minimum:
        return False
    allow_initializers_apart(model)
    try:
        converted = onnx.version_converter.convert_version(ir.to_proto(model), minimum)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        needed = _NEEDED_FOR.get(minimum, f"the chosen bit-widths need opset {minimum}")
        raise PassInputError(
            f"the model is at opset {current}, {needed}, and onnx's version converter could not "
            f"upgrade it ({reason}): re-export the model at opset {minimum}"
            + (" or choose 8-bit weights and activations (opset 13)" if minimum > 13 else "")
        ) from None
    upgraded = ir.from_proto(converted)
    if current < 7:
        _slopes_per_channel(upgraded.graph)
    _copy_metadata(model.graph, upgraded.graph)
    model.graph = upgraded.graph
    model.ir_version = max(model.ir_version, upgraded.ir_version)
    # a newer op's inference may see through a shape the model declares wrongly
    replace_contradicted_shapes(model)
    return True


def _slopes_per_channel(graph: ir.Graph) -> None:
    """What the converter misses from opset 6 to 7: PRelu's 1-D slope of C values applied one per
    channel (axis 1) becomes a numpy-style broadcast from the last axis, so such a constant slope of
    a rank-r input is reshaped to [C, 1, ..., 1]."""
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        x, slope = node.inputs
        if x is None or x.shape is None or slope is None or slope.const_value is None:
            continue
        values = slope.const_value.numpy()
        if values.ndim != 1 or values.size == 1 or len(x.shape) <= 2:
            continue
        name = f"{slope.name}_per_channel"
        while name in node.graph.initializers:
            name += "_"
        per_channel = ir.Value(
            name=name, const_value=ir.tensor(values.reshape(-1, *[1] * (len(x.shape) - 2)))
        )
        per_channel.shape, per_channel.dtype = per_channel.const_value.shape, slope.dtype
        node.graph.register_initializer(per_channel)
        node.replace_input_with(1, per_channel)


def _metadata_by_key(graph: ir.Graph) -> dict[str, dict[str, str]]:
    """``metadata_props`` of every annotated node and value of ``graph`` (subgraphs included), by
    key."""
    found: dict[str, dict[str, str]] = {}
    if graph.metadata_props:
        found["graph:"] = dict(graph.metadata_props)
    for g in (graph, *graph.subgraphs()):
        for value in (
            *g.inputs,
            *g.initializers.values(),
            *(v for node in g for v in node.outputs),
        ):
            if value.metadata_props and value.name:
                found["value:" + value.name] = dict(value.metadata_props)
        for node in g:
            key = _node_key(node)
            if node.metadata_props and key:
                found["node:" + key] = dict(node.metadata_props)
    return found


def _node_key(node: ir.Node) -> str | None:
    if node.name:
        return node.name
    first = node.outputs[0].name if node.outputs else None
    return "->" + first if first else None


def _copy_metadata(source: ir.Graph, target: ir.Graph) -> None:
    """Give ``target``'s nodes and values the ``metadata_props`` of their namesakes in
    ``source``."""
    saved = _metadata_by_key(source)
    if not saved:
        return
    target.metadata_props.update(saved.get("graph:", {}))
    for g in (target, *target.subgraphs()):
        for value in (
            *g.inputs,
            *g.initializers.values(),
            *(v for node in g for v in node.outputs),
        ):
            value.metadata_props.update(saved.get("value:" + (value.name or ""), {}))
        for node in g:
            key = _node_key(node)
            if key:
                node.metadata_props.update(saved.get("node:" + key, {}))
