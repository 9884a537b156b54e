"""Where a layer's output quantizer goes: ``output_target`` (part of the lowering plan, which
``lower-qdq`` emits and the evaluator simulates) and whether it replaces a body's result.

Kept apart from ``decide.py`` because it reads the graph around the layer (its consumers, the
bodies that read them), where ``plan_layer`` reads only the layer's facts.
"""

from __future__ import annotations

import onnx_ir as ir

from mpqc.ir.layers import Layer

__all__ = ["body_result", "output_target"]


def output_target(layer: Layer) -> ir.Value | None:
    """The tensor that gets an integer kernel's output quantizer: the layer's output, or the output
    of a single following Relu; None when no node reads that tensor: the model's result stays
    exactly as the float layer computes it, and an output nothing reads (an LSTM's or GRU's
    sequence when only its last state is used; canonicalize leaves it unnamed) has nothing to
    feed. What a body returns is read after it by the If, Loop or Scan holding it, like any
    consumer (``body_result``). None too when onnxruntime would move the quantizer into a body
    (``_moved_into_a_body``)."""
    out = layer.node.outputs[0]
    uses = out.uses()
    target = uses[0].node.outputs[0] if len(uses) == 1 and uses[0].node.op_type == "Relu" else out
    if _moved_into_a_body(target, layer.node.graph):
        return None
    if not _read_by_nothing(target) or (layer.in_subgraph and target.is_graph_output()):
        return target
    return None


def _read_by_nothing(value: ir.Value) -> bool:
    """No node reads ``value``, or only the Cast back to the model's float type after a widened
    layer (``passes/lib/widen.py``), whose output nothing reads either."""
    uses = value.uses()
    return not uses or (
        len(uses) == 1
        and uses[0].node.op_type == "Cast"
        and not value.is_graph_output()
        and _read_by_nothing(uses[0].node.outputs[0])
    )


#: The ops onnxruntime's QDQ propagation moves a DequantizeLinear past, onto their outputs.
_DQ_PROPAGATING = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice", "MaxPool"})


def _moved_into_a_body(value: ir.Value, graph: ir.Graph | None) -> bool:
    """Whether a DequantizeLinear on ``value`` would be moved by onnxruntime's QDQ propagation
    onto a value an If/Loop/Scan body reads from ``graph``: onnxruntime 1.32 then aborts the whole
    process while loading the model (a failed C++ assertion, which no caller can catch)."""
    for use in value.uses():
        node = use.node
        if node.graph is not graph or node.op_type not in _DQ_PROPAGATING:
            continue
        moved = node.outputs[0]
        if any(u.node.graph is not graph for u in moved.uses()) or _moved_into_a_body(moved, graph):
            return True
    return False


def body_result(layer: Layer, target: ir.Value) -> bool:
    """Whether ``layer``'s output quantizer also replaces a result of the body holding it: the
    body then returns the quantized tensor (the main graph's results stay float), so the layer's
    output feeds only its quantizer, as onnxruntime's integer kernels need."""
    return layer.in_subgraph and target.is_graph_output()
