"""``sensitivity-task``: the user's own metric, one layer lowered at a time. Slow and exact.

The damage of candidate ``w{b}`` (``a{b}``) of layer ``l`` is ``metric(float) - metric(model with
only l's weight (activation) at b bits)``, and of ``adyn`` that of l's input with a range measured
on every run (the MatMul/Gemm layers that have the form, on a spec that runs it, as
``sensitivity-output`` scores them), where ``metric`` is ``context.eval_fn`` — a callable
taking an ``onnx.ModelProto`` and returning a number, higher is better (accuracy, BLEU, -WER...) —
run on the user's held-out data. The measured model is built by the same code that ships:
``mpqc.bits`` is set on that one layer of a copy and ``lower-qdq`` lowers it, so the metric sees the
real QDQ model, integer kernels and all. This is ALPS without fine-tuning (METHODS.md §4) and the
signal that beacon-style and accuracy-aware searches trust; it costs one lowering and one evaluation
per layer and candidate, run in this process (an arbitrary metric function need not pickle).
"""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir

from mpqc.core.bits import DYNAMIC_BITS, FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes.analysis.sensitivity_base import ActivationCandidates, SensitivityPass
from mpqc.passes.infra.base import PassInputError, option
from mpqc.passes.infra.context import CompileContext
from mpqc.passes.infra.registry import register
from mpqc.passes.lower.lower_qdq import LowerQDQPass

__all__ = ["SensitivityTaskPass"]


@register
class SensitivityTaskPass(SensitivityPass):
    name = "sensitivity-task"
    metric = "task"
    may_read = frozenset({annotations.CALIB_RANGE})

    @dataclasses.dataclass(frozen=True)
    class Options(ActivationCandidates):
        act_signed: bool = option(
            False, "signed activations, as lower-qdq's option of the same name"
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = self.layers(model)
        if self.context.eval_fn is None:
            raise PassInputError(
                f"{self.name} needs a task metric: a function taking an onnx.ModelProto and "
                "returning a number, higher is better",
                field="eval_fn",
            )
        wbits, abits = self.weight_bits(), self.activation_bits()
        base = ir.to_proto(model)
        reference = self.task_metric(base, "the float model")
        dynamic = {layer.name for layer in self.dynamic_layers(layers)}
        for layer in layers:
            candidates: list[tuple[str, tuple]] = [(f"w{b}", (b, FLOAT_BITS)) for b in wbits]
            if layer.activation is not None and annotations.CALIB_RANGE.has(layer.activation):
                candidates += [(f"a{b}", (FLOAT_BITS, b)) for b in abits]
            if layer.name in dynamic:
                candidates.append(("adyn", Bits(FLOAT_BITS, DYNAMIC_BITS, dynamic=True)))
            scores = {}
            for candidate, bits in candidates:
                lowered = self._lowered(base, layer.name, bits)
                scores[candidate] = reference - self.task_metric(
                    lowered, f"layer '{layer.name}' at {candidate}"
                )
            self.write(layer, scores, {"reference": reference})
        return ir.passes.PassResult(model, modified=True)

    def _lowered(self, base: onnx.ModelProto, layer_name: str, bits: tuple) -> onnx.ModelProto:
        """``base`` with only ``layer_name`` at ``bits``, lowered by lower-qdq."""
        copy = ir.from_proto(base)
        for node in copy.graph:
            annotations.BITS.remove(node)
        node = next(
            layer.node for layer in quantizable_layers(copy.graph) if layer.name == layer_name
        )
        annotations.BITS.set(node, annotations.layer_bits(bits))
        LowerQDQPass(
            context=CompileContext(hw=self.context.hw), act_signed=self.options.act_signed
        )(copy)
        return ir.to_proto(copy)
