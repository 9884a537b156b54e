"""``fold-constants``: evaluate nodes whose inputs are all constant, once, at compile time.

Exporters leave weight arithmetic in graphs (a Transpose or Reshape of an initializer, a Cast, a
Mul by a constant): a quantizer that only sees the result as an initializer can quantize it, and
the runtime no longer recomputes it. Each foldable node is evaluated with onnx's reference
evaluator — the spec's own semantics — and replaced by an initializer. Nodes with random outputs or
subgraphs are left alone, and results larger than ``max_bytes`` are not materialized.

Inside If/Loop/Scan bodies too, where exporters put the same weight arithmetic, run on every trip:
a body's constants are its own initializers and Constant nodes and the outer graphs' initializers
(``constant_array``); a value the body reads from an outer graph's inputs or nodes, and the body's
own inputs (a Loop's counter and carried values), are not. A result computed in a body becomes an
initializer of that body, so it stays in its scope.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from mpqc.ir.annotations import ALL
from mpqc.ir.layers import constant_array
from mpqc.passes.infra.base import Pass, option
from mpqc.passes.infra.registry import register

__all__ = ["FoldConstantsPass"]

_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}


@register
class FoldConstantsPass(Pass):
    name = "fold-constants"
    preserves = frozenset({ALL})

    @dataclasses.dataclass(frozen=True)
    class Options:
        max_bytes: int = option(
            64 * 2**20, "largest folded result kept as an initializer, in bytes"
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", 17)
        folded = 0
        for graph in (model.graph, *model.graph.subgraphs()):
            folded += self._fold(graph, opset)
        return ir.passes.PassResult(model, modified=folded > 0)

    def _fold(self, graph: ir.Graph, opset: int) -> int:
        """Fold ``graph``'s foldable nodes (not its bodies'); how many were folded."""
        folded = 0
        for node in list(graph):
            if not self._foldable(node):
                continue
            inputs = [constant_array(v) if v is not None else None for v in node.inputs]
            if any(v is None and node.inputs[i] is not None for i, v in enumerate(inputs)):
                continue
            outputs = _evaluate(node, inputs, opset)
            if outputs is None or sum(o.nbytes for o in outputs) > self.options.max_bytes:
                continue
            for value, array in zip(node.outputs, outputs, strict=True):
                _replace_with_initializer(graph, value, array)
            graph.remove(node, safe=True)
            folded += 1
        return folded

    @staticmethod
    def _foldable(node: ir.Node) -> bool:
        if (
            node.domain not in ("", "ai.onnx")
            or node.op_type in _NONDETERMINISTIC
            or node.op_type == "Constant"
        ):
            return False
        if any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
        ):
            return False
        if any(out.is_graph_output() for out in node.outputs):
            return False
        return (
            all(v is None or v.const_value is not None for v in node.inputs)
            and len(node.inputs) > 0
        )


def _evaluate(
    node: ir.Node, inputs: list[np.ndarray | None], opset: int
) -> list[np.ndarray] | None:
    names = [f"i{i}" if v is not None else "" for i, v in enumerate(inputs)]
    outs = [f"o{i}" for i in range(len(node.outputs))]
    proto = onnx.helper.make_node(node.op_type, names, outs)
    proto.attribute.extend(
        ir.serde.serialize_attribute(a) for a in node.attributes.values() if not a.is_ref()
    )
    feeds = {n: v for n, v in zip(names, inputs, strict=True) if n}
    try:
        evaluator = ReferenceEvaluator(
            onnx.helper.make_graph([proto], "fold", [], []), opsets={"": opset}
        )
        results = evaluator.run(outs, feeds)
    except Exception:  # an op the reference evaluator lacks is simply not folded
        return None
    return [np.asarray(r) for r in results]


def _replace_with_initializer(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    constant = ir.Value(name=value.name, const_value=ir.tensor(array, name=value.name))
    constant.shape = ir.Shape(array.shape)
    constant.dtype = ir.DataType.from_numpy(array.dtype)
    value.replace_all_uses_with(constant)
    value.name = None  # free the name for the initializer
    constant.name = constant.const_value.name
    graph.register_initializer(constant)
