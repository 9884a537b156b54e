"""Reading the tensors If/Loop/Scan bodies compute, which onnxruntime does not return.

onnxruntime returns a model's outputs and nothing else, and a value computed inside a body cannot
be named as a main-graph output: it does not exist in the main graph's scope. ``expose`` returns a
copy of the model in which chosen body values are carried out, level by level, to main-graph
outputs that the analyses fetch like any other tensor (calibration ranges, shapes, features):

- out of an ``If`` branch, as an extra output of both branches: the branch that computes the value
  returns it, the other an empty tensor of the same type (the two branches of an If may return
  different shapes since opset 11), so the If's new output is empty on samples where the branch did
  not run;
- out of a ``Scan`` body, as an extra scan output: the value of every step stacked along a new
  leading axis (``Exposed.outputs`` counts those axes; zero steps give an empty tensor);
- out of a ``Loop`` body, as an extra loop-carried value that gathers every iteration's value,
  flattened (``Concat`` onto an empty 1-D tensor): a Loop's values may change shape from one
  iteration to the next (a growing sequence, an If inside that takes turns), which scan outputs
  refuse, so only their numbers come out, not their shape.

Each exposed value leaves its body through an Identity under a fresh name (ONNX names are unique
across scopes, and a body output that is a body input or an outer value is not allowed
everywhere). Bodies of other ops (contrib or sequence ops holding graphs) are not entered. The
caller's model is not changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import onnx
from onnx import helper

__all__ = ["Exposed", "expose"]


@dataclasses.dataclass(frozen=True)
class Exposed:
    """A model whose body values are main-graph outputs too."""

    proto: onnx.ModelProto
    #: Main-graph output -> (the body value it carries, how many iteration axes lead its shape;
    #: None when a Loop flattened it).
    outputs: dict[str, tuple[str, int | None]]


def expose(proto: onnx.ModelProto, dtypes: Mapping[str, int]) -> Exposed:
    """A copy of ``proto`` whose outputs also carry every body value named in ``dtypes`` (name ->
    ONNX element type): the outputs of body nodes and the inputs of Loop/Scan bodies."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    names = _Names(copy.graph)
    outputs = {}
    for name, inner, stacked in _out_of_bodies(copy.graph, dtypes, names):
        copy.graph.output.append(helper.make_tensor_value_info(name, dtypes[inner], None))
        outputs[name] = (inner, stacked)
    return Exposed(copy, outputs)


#: (name in the enclosing graph, the body value carried, iteration axes or None: flattened).
_Carried = tuple[str, str, int | None]


def _out_of_bodies(
    graph: onnx.GraphProto, dtypes: Mapping[str, int], names: _Names
) -> list[_Carried]:
    """The values carried out of the bodies of ``graph``'s nodes, as new outputs of those nodes."""
    carried: list[_Carried] = []
    for node in list(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "If":
            carried += _out_of_if(node, dtypes, names)
        elif node.op_type == "Scan":
            carried += _out_of_scan(node, dtypes, names)
        elif node.op_type == "Loop":
            carried += _out_of_loop(graph, node, dtypes, names)
    return carried


def _in_body(body: onnx.GraphProto, dtypes: Mapping[str, int], names: _Names) -> list[_Carried]:
    """What a body makes visible: its own values in ``dtypes`` and what its nested bodies carry."""
    own = [value.name for value in body.input if value.name in dtypes]
    own += [out for node in body.node for out in node.output if out in dtypes]
    return [(name, name, 0) for name in own] + _out_of_bodies(body, dtypes, names)


def _leave(body: onnx.GraphProto, name: str, dtype: int, names: _Names) -> None:
    """Add ``name`` to ``body``'s outputs through an Identity under a fresh name."""
    fresh = names.fresh(f"{name}.exposed")
    body.node.append(helper.make_node("Identity", [name], [fresh], name=fresh))
    body.output.append(helper.make_tensor_value_info(fresh, dtype, None))


def _out_of_if(node: onnx.NodeProto, dtypes: Mapping[str, int], names: _Names) -> list[_Carried]:
    branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
    if len(branches) != 2:
        return []
    found = {branch: _in_body(body, dtypes, names) for branch, body in branches.items()}
    carried = []
    for branch, values in found.items():
        for name, inner, stacked in values:
            dtype = dtypes[inner]
            for other, body in branches.items():
                if other == branch:
                    _leave(body, name, dtype, names)
                else:
                    empty = names.fresh(f"{name}.absent")
                    body.node.append(
                        helper.make_node(
                            "Constant",
                            [],
                            [empty],
                            name=empty,
                            value=helper.make_tensor(empty, dtype, [0], []),
                        )
                    )
                    body.output.append(helper.make_tensor_value_info(empty, dtype, None))
            out = names.fresh(f"{inner}.out")
            node.output.append(out)
            carried.append((out, inner, stacked))
    return carried


def _out_of_scan(node: onnx.NodeProto, dtypes: Mapping[str, int], names: _Names) -> list[_Carried]:
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    if body is None:
        return []
    carried = []
    for name, inner, stacked in _in_body(body, dtypes, names):
        _leave(body, name, dtypes[inner], names)
        out = names.fresh(f"{inner}.out")
        node.output.append(out)
        carried.append((out, inner, None if stacked is None else stacked + 1))
    for attribute in node.attribute:  # per scan output, when given: new ones stack on axis 0
        if attribute.name in ("scan_output_axes", "scan_output_directions"):
            attribute.ints.extend([0] * len(carried))
    return carried


def _out_of_loop(
    graph: onnx.GraphProto, node: onnx.NodeProto, dtypes: Mapping[str, int], names: _Names
) -> list[_Carried]:
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    if body is None:
        return []
    values = _in_body(body, dtypes, names)
    if not values:
        return []
    # Loop: inputs (M, cond, carried...), body inputs (i, cond, carried...), body outputs
    # (cond, carried..., scan...), outputs (carried..., scan...). New carried values go after the
    # existing ones.
    count = len(node.input) - 2
    flat = names.fresh("mpqc.flat")
    body.node.append(
        helper.make_node(
            "Constant",
            [],
            [flat],
            name=flat,
            value=helper.make_tensor(flat, onnx.TensorProto.INT64, [1], [-1]),
        )
    )
    new_inputs, new_outputs, outer_outputs, carried = [], [], [], []
    at = list(graph.node).index(node)
    for name, inner, _ in values:
        dtype = dtypes[inner]
        start, before, row, after = (
            names.fresh(f"{inner}.{part}") for part in ("none", "seen", "row", "seen")
        )
        graph.node.insert(
            at,
            helper.make_node(
                "Constant", [], [start], name=start, value=helper.make_tensor(start, dtype, [0], [])
            ),
        )
        at += 1
        node.input.append(start)
        new_inputs.append(helper.make_tensor_value_info(before, dtype, [None]))
        body.node.append(helper.make_node("Reshape", [name, flat], [row], name=row))
        body.node.append(helper.make_node("Concat", [before, row], [after], name=after, axis=0))
        new_outputs.append(helper.make_tensor_value_info(after, dtype, [None]))
        out = names.fresh(f"{inner}.out")
        outer_outputs.append(out)
        carried.append((out, inner, None))
    _insert(body.input, 2 + count, new_inputs)
    _insert(body.output, 1 + count, new_outputs)
    outputs = list(node.output)
    del node.output[:]
    node.output.extend(outputs[:count] + outer_outputs + outputs[count:])
    return carried


def _insert(field, index: int, items: list) -> None:
    """Insert ``items`` into the repeated message field ``field`` at ``index``."""
    kept = [type(item)() for item in field]
    for copy, item in zip(kept, field, strict=True):
        copy.CopyFrom(item)
    del field[:]
    field.extend(kept[:index] + items + kept[index:])


class _Names:
    """Fresh names, unique across every scope of the model."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken: set[str] = set()
        self._collect(graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        self.taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        self.taken.update(t.name for t in graph.initializer)
        for node in graph.node:
            self.taken.update(node.output)
            self.taken.add(node.name)
            for attribute in node.attribute:
                for body in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                    self._collect(body)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name
