"""The IR printer: a deterministic, diffable text form of a model.

Compiler people read these dumps between passes and diff them, so the text depends only on the
model: one node per line in topological order (independent nodes ordered by their output names, not
by the order passes inserted them), values by their names (unnamed ones numbered in
order of appearance), attributes and annotations sorted, floats at a fixed number of significant
digits, and tensors summarized by type, shape and a content hash instead of their numbers —
``int4[64,3,3,3] sha1:1f2e3d4c5b6a``. Same model in, same text out.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import onnx_ir as ir

from mpqc.ir.annotations import FLOAT_DIGITS, canonical_json
from mpqc.ir.graphs import topological_nodes

__all__ = ["dump"]

_INDENT = "  "


def dump(model: ir.Model) -> str:
    """Return the text form of ``model``."""
    printer = _Printer()
    printer.model(model)
    return printer.text()


def _float(x: float) -> str:
    return f"{x:.{FLOAT_DIGITS}g}"


def _type(value: ir.Value) -> str:
    dtype = value.dtype.name.lower() if value.dtype is not None else "?"
    if value.shape is None:
        return dtype
    dims = ",".join(str(d) if d is not None else "?" for d in value.shape)
    return f"{dtype}[{dims}]"


def _tensor(tensor: ir.TensorProtocol) -> str:
    digest = hashlib.sha1(tensor.tobytes()).hexdigest()[:12]
    dims = ",".join(str(d) for d in tensor.shape)
    summary = f"{tensor.dtype.name.lower()}[{dims}] sha1:{digest}"
    if tensor.size == 1:  # scalars (scales, zero points, epsilons) are worth reading in full
        scalar = np.asarray(tensor.numpy()).reshape(-1)[0]
        summary += " = " + (
            _float(float(scalar)) if tensor.dtype.is_floating_point() else str(scalar)
        )
    return summary


def _props(obj: ir.Node | ir.Value | ir.Model) -> str:
    items = [f"{k}={v}" for k, v in sorted(obj.metadata_props.items())]
    return " {" + ", ".join(items) + "}" if items else ""


class _Printer:
    def __init__(self) -> None:
        self._out = io.StringIO()
        self._names: dict[int, str] = {}

    def text(self) -> str:
        return self._out.getvalue()

    def _line(self, depth: int, text: str) -> None:
        self._out.write(_INDENT * depth + text + "\n")

    def _name(self, value: ir.Value | None) -> str:
        if value is None:
            return "%<none>"
        if value.name:
            return "%" + value.name
        return "%" + self._names.setdefault(id(value), f"_{len(self._names)}")

    def model(self, model: ir.Model) -> None:
        opsets = ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in sorted(model.opset_imports.items()))
        self._line(0, f"// mpqc IR  ir_version={model.ir_version}  opsets={{{opsets}}}")
        for key, value in sorted(model.metadata_props.items()):
            self._line(0, f"// {key} = {value}")
        self.graph(model.graph, 0, "graph")

    def graph(self, graph: ir.Graph, depth: int, keyword: str) -> None:
        inputs = ", ".join(f"{self._name(v)}: {_type(v)}{_props(v)}" for v in graph.inputs)
        self._line(depth, f"{keyword} {graph.name or ''}({inputs}) {{")
        for name in sorted(graph.initializers):
            value = graph.initializers[name]
            tensor = value.const_value
            body = _tensor(tensor) if tensor is not None else _type(value)
            self._line(depth + 1, f"{self._name(value)} = init {body}{_props(value)}")
        for node in topological_nodes(graph, by_name=True):
            self.node(node, depth + 1)
        outputs = ", ".join(self._name(v) for v in graph.outputs)
        self._line(depth + 1, f"return {outputs}")
        self._line(depth, "}")

    def node(self, node: ir.Node, depth: int) -> None:
        results = ", ".join(f"{self._name(v)}: {_type(v)}" for v in node.outputs)
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        args = ", ".join(self._name(v) for v in node.inputs)
        label = f" @{node.name}" if node.name else ""
        attrs, subgraphs = self._attributes(node)
        value_notes = "".join(
            f" [{self._name(v)}{_props(v)}]" for v in node.outputs if v.metadata_props
        )
        self._line(depth, f"{results} = {op}{label}({args}){attrs}{_props(node)}{value_notes}")
        for attr_name, graph in subgraphs:
            self.graph(graph, depth + 1, f"^{attr_name}")

    def _attributes(self, node: ir.Node) -> tuple[str, list[tuple[str, ir.Graph]]]:
        parts: list[str] = []
        subgraphs: list[tuple[str, ir.Graph]] = []
        for name in sorted(node.attributes):
            attr = node.attributes[name]
            if attr.is_ref():
                parts.append(f"{name}=@{attr.ref_attr_name}")
            elif attr.type == ir.AttributeType.GRAPH:
                subgraphs.append((name, attr.value))
            elif attr.type == ir.AttributeType.GRAPHS:
                subgraphs.extend((f"{name}[{i}]", g) for i, g in enumerate(attr.value))
            else:
                parts.append(f"{name}={self._attr_value(attr)}")
        return (" <" + ", ".join(parts) + ">" if parts else ""), subgraphs

    def _attr_value(self, attr: ir.Attr) -> str:
        value = attr.value
        if attr.type == ir.AttributeType.FLOAT:
            return _float(value)
        if attr.type == ir.AttributeType.FLOATS:
            return "[" + ",".join(_float(v) for v in value) + "]"
        if attr.type == ir.AttributeType.TENSOR:
            return _tensor(value)
        if attr.type in (ir.AttributeType.INTS, ir.AttributeType.STRINGS):
            return canonical_json(list(value))
        return canonical_json(value)
