"""Cutting the fake-quant graph: controls fixed as constants, and prefix/suffix sessions.

What sensitivity analysis asks most — one layer quantized, every other float — need not rerun the
float prefix. One float run per group of layers keeps the values that cross each layer's cut, and
each layer gets a session on its suffix: the nodes downstream of its controls, every other layer
fixed at float (its quantizers removed, its weight folded to a constant). The errors equal the whole
graph's up to float rounding: float layers there run with constant, prepacked weights, as in the
lowered model, in sessions with every graph optimization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mpqc.passes.lib.evaluator.store import entry

__all__ = [
    "LAYERS_PER_PREFIX",
    "Fixed",
    "cut",
    "declared_inputs",
    "fix_controls",
    "suffix_boundary",
]

#: Layers whose suffix boundaries one float run of the prefix collects: more share one run, fewer
#: bound the memory the kept values take (bench/RESULTS.md has the figure on PP-OCRv4).
LAYERS_PER_PREFIX = 8


@dataclasses.dataclass(frozen=True)
class Fixed:
    """The fake-quant graph's nodes with some controls fixed (see ``fix_controls``); its
    initializers stay in the original proto, so fixing controls copies no weights, and so do the
    nodes it leaves as they were (read only: ``cut`` copies what it keeps)."""

    nodes: list[onnx.NodeProto]
    #: Fixed controls (arrays) and the weight entries that replace selections by them (tensors,
    #: references into the evaluator's data file for stored stacks): new initializers.
    constants: dict[str, np.ndarray | onnx.TensorProto]


def fix_controls(
    proto: onnx.ModelProto,
    controls: Mapping[str, np.ndarray],
    slices: dict[tuple[str, int], onnx.TensorProto],
) -> Fixed:
    """``proto``'s nodes with the control inputs in ``controls`` fixed: a ``Where`` whose condition
    is fixed becomes the branch it selects (a quantizer that is off costs nothing), and a ``Gather``
    of an initializer by a fixed index becomes that entry (a weight fixed at one candidate is a
    plain constant, and the other candidates are not carried along). ``slices`` caches the entries
    (``store.entry``)."""
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    constants: dict[str, np.ndarray | onnx.TensorProto] = dict(controls)
    alias: dict[str, str] = {}

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    def rename(node: onnx.NodeProto) -> None:
        for slot, name in enumerate(node.input):
            node.input[slot] = resolve(name)
        for body in _bodies(node):  # bodies read the enclosing scope's values by name too
            for inner in body.node:
                rename(inner)

    nodes = []
    for original in proto.graph.node:  # in topological order: a value's alias comes before its uses
        selector = (
            controls.get(original.input[1])
            if original.op_type == "Gather" and len(original.input) == 2
            else None
        )
        condition = controls.get(original.input[0]) if original.op_type == "Where" else None
        if condition is not None and np.asarray(condition).size == 1:
            alias[original.output[0]] = original.input[1] if bool(condition) else original.input[2]
        elif (
            selector is not None
            and np.asarray(selector).ndim == 0
            and next((a.i for a in original.attribute if a.name == "axis"), 0) == 0
            and original.input[0] in initializers
        ):
            key = (original.input[0], int(selector))
            name = f"{key[0]}[{key[1]}]"
            if key not in slices:
                slices[key] = entry(initializers[key[0]], key[1], name)
            constants[name] = slices[key]
            alias[original.output[0]] = name
        elif any(name in alias for name in _uses(original)):
            node = onnx.NodeProto()
            node.CopyFrom(original)
            rename(node)
            nodes.append(node)
        else:
            nodes.append(original)  # unchanged: the proto's own node, which nothing modifies
    outputs = {value.name for value in proto.graph.output}
    nodes += [
        helper.make_node("Identity", [resolve(name)], [name]) for name in alias if name in outputs
    ]
    return Fixed(nodes, constants)


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [
        body
        for attribute in node.attribute
        for body in ([attribute.g] if attribute.HasField("g") else list(attribute.graphs))
    ]


def _uses(node: onnx.NodeProto) -> list[str]:
    """The values ``node`` reads, including those its subgraphs read from the enclosing scope."""
    names = [name for name in node.input if name]
    for body in _bodies(node):
        for inner in body.node:
            names += _uses(inner)
    return names


def suffix_boundary(proto: onnx.ModelProto, fixed: Fixed, controls: str) -> list[str]:
    """The cut in front of the nodes downstream of the inputs named ``controls*``: the non-constant
    values they read but do not compute, and the graph outputs they do not compute."""
    constant = {tensor.name for tensor in proto.graph.initializer} | set(fixed.constants)
    inputs = [value.name for value in proto.graph.input if value.name not in fixed.constants]
    tainted = {name for name in inputs if name.startswith(controls)}
    read: set[str] = set()
    produced: set[str] = set()
    for node in fixed.nodes:
        uses = _uses(node)
        if tainted.intersection(uses):
            tainted.update(node.output)
            produced.update(node.output)
            read.update(uses)
        elif all(name in constant for name in uses):
            constant.update(node.output)
    defined = set(inputs) | {name for node in fixed.nodes for name in node.output}
    read.update(value.name for value in proto.graph.output)
    computed = produced | constant | tainted
    return sorted(name for name in read if name in defined and name not in computed)


def cut(
    proto: onnx.ModelProto, fixed: Fixed, given: Sequence[str], outputs: Sequence[str]
) -> onnx.ModelProto:
    """The nodes of ``fixed`` that compute ``outputs`` from the values ``given`` (new float inputs
    of any shape: set another element type on them as needed), the graph's inputs and constants;
    only the initializers they read are copied."""
    cut = set(given)
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(fixed.nodes):
        if any(name in needed and name not in cut for name in node.output):
            kept.append(node)
            needed.update(_uses(node))
    inputs = [
        value
        for value in proto.graph.input
        if value.name in needed and value.name not in cut and value.name not in fixed.constants
    ]
    inputs += [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        for name in given
        if name in needed
    ]
    declared = {value.name: value for value in proto.graph.output}
    initializers = [
        tensor
        for tensor in proto.graph.initializer
        if tensor.name in needed and tensor.name not in fixed.constants
    ]
    initializers += [
        value
        if isinstance(value, onnx.TensorProto)
        else numpy_helper.from_array(np.asarray(value), name)
        for name, value in fixed.constants.items()
        if name in needed
    ]
    sub = helper.make_graph(
        kept[::-1],
        proto.graph.name,
        inputs,
        [declared.get(name) or onnx.ValueInfoProto(name=name) for name in outputs],
        initializers,
    )
    model = helper.make_model(sub, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    return model


def declared_inputs(
    session: ort.InferenceSession, values: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The entries of ``values`` that ``session`` takes as inputs: a cut-down graph drops the
    inputs it does not read (a graph input the model never uses, say), and onnxruntime refuses
    extra feeds."""
    declared = {value.name for value in session.get_inputs()}
    return {name: value for name, value in values.items() if name in declared}
