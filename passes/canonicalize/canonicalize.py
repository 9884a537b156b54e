"""``canonicalize``: bring any exported model to the one form the analyses expect.

Exporters differ: weights as Constant nodes or initializers, initializers doubling as graph inputs,
weight arithmetic left in the graph, BatchNorm after Conv, dead branches, missing shapes, opsets
older than onnxruntime runs. After this pass the model is at IR 4 and opset 7 at least, every
weight is an initializer, constant subexpressions are folded, BatchNorms are folded into
their Convs, unused nodes are gone, nodes are in topological order and every tensor has the type and
shape onnx can infer, inside If/Loop/Scan bodies as in the main graph. Each step is a pass of its
own (onnx_ir's or mpqc's), run in a fixed order.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnx_ir.passes import common

from mpqc.ir.annotations import CALIB_RANGE
from mpqc.passes.canonicalize.fold_batchnorm import FoldBatchNormPass
from mpqc.passes.canonicalize.fold_constants import FoldConstantsPass
from mpqc.passes.canonicalize.identities import OutputPreservingIdentityEliminationPass
from mpqc.passes.canonicalize.shapes import ShapeInferencePass
from mpqc.passes.canonicalize.unused import RemoveUnusedPass
from mpqc.passes.infra.base import Pass, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.opset import ORT_MIN_OPSET, allow_initializers_apart, ensure_opset

__all__ = ["CanonicalizePass"]


@register
class CanonicalizePass(Pass):
    name = "canonicalize"
    preserves = frozenset({CALIB_RANGE})

    @dataclasses.dataclass(frozen=True)
    class Options:
        fold_constants: bool = option(True, "evaluate constant subexpressions at compile time")
        fold_batchnorm: bool = option(True, "fold BatchNormalization into the preceding Conv")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        steps: list[ir.passes.PassBase] = [
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common.RemoveInitializersFromInputsPass(),
            OutputPreservingIdentityEliminationPass(),
        ]
        if self.options.fold_constants:
            steps.append(FoldConstantsPass(context=self.context))
        if self.options.fold_batchnorm:
            steps.append(FoldBatchNormPass(context=self.context))
        shapes = ShapeInferencePass()
        steps += [
            RemoveUnusedPass(),
            common.RemoveUnusedFunctionsPass(),
            common.TopologicalSortPass(),
            shapes,
        ]
        # Initializers leave the graph inputs, which IR 3 does not allow.
        modified = allow_initializers_apart(model)
        modified = ensure_opset(model, ORT_MIN_OPSET) or modified
        for step in steps:
            result = step(model)
            modified = modified or result.modified
        if shapes.contradicted:
            self.context.note(
                "canonicalize: the graph contradicts the declared shape of "
                + ", ".join(f"'{name}'" for name in shapes.contradicted)
                + "; the inferred shape replaces it"
            )
        return ir.passes.PassResult(model, modified)
