"""``cost``: what each layer costs on the target chip at every candidate bit-width.

For every quantizable layer and every (weight bits, activation bits) the spec runs — intersected
with the user's ``--wbits/--abits`` — it records latency, energy and BOPs from the spec's roofline
cost model and the bytes ``lower-qdq`` will write (``passes/lower/footprint.py``) in ``mpqc.cost``,
plus the float cost. Model totals (``mpqc.cost.total``)
add what stays float: every other initializer's bytes and every other op's fixed overhead, so a size
budget like ``0.25x`` is a fraction of the whole written model, not of the layers alone.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from mpqc.hwspecs import CostModel, UnsupportedPrecisionError
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes.analysis.describe import describe, static_shapes
from mpqc.passes.base import Pass, PassError
from mpqc.passes.lower.footprint import FLOAT_BITS, stored_bytes
from mpqc.passes.registry import register

__all__ = ["CostAnalysis", "candidate_key"]


def candidate_key(wbits: int | None, abits: int | None) -> str:
    return "float" if wbits is None and abits is None else f"w{wbits or 32}a{abits or 32}"


def _entry(cost, size: int) -> dict[str, object]:
    return {
        "latency_s": cost.latency_s,
        "energy_j": cost.energy_j,
        "size": size,
        "act_bytes": cost.act_bytes,
        "bops": cost.bops,
        "bound": cost.bound,
        "native": cost.native,
    }


@register
class CostAnalysis(Pass):
    name = "cost"
    writes = frozenset({"mpqc.cost", "mpqc.cost.total"})
    preserves = frozenset({"*"})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        spec = self.context.hw
        if spec is None:
            raise PassError("the cost pass needs a hardware spec: pass --hw NAME or a spec .yaml")
        layers = quantizable_layers(model.graph)
        if not layers:
            raise PassError("the model has no quantizable layer (Conv, Gemm, MatMul with a constant weight, ...)")
        shapes = static_shapes(model, self.context)
        described = [(layer, describe(layer, shapes)) for layer in layers]
        model_cost = CostModel(spec)
        pairs = spec.supported_pairs(self.context.wbits, self.context.abits)
        if not pairs:
            raise PassError(
                f"{spec.name} runs none of the requested bit-widths: weights {', '.join(map(str, spec.weight_bits))}, "
                f"activations {', '.join(map(str, spec.act_bits))}"
            )
        reference = {"latency_s": 0.0, "energy_j": 0.0, "size": 0.0, "bops": 0.0}
        for layer, desc in described:

            def entry(wbits: int | None, abits: int | None) -> dict[str, object]:
                # Time and energy from the spec's roofline; size from what lower-qdq writes.
                size = stored_bytes(layer, wbits or FLOAT_BITS, abits or FLOAT_BITS, spec)
                return _entry(model_cost.layer_cost(desc, wbits, abits), size)

            table = {candidate_key(w, a): entry(w, a) for w, a in pairs}
            try:
                table["float"] = entry(None, None)
            except UnsupportedPrecisionError:
                pass  # the chip has no float path; the reference is then w8a8
            annotations.COST.set(layer.node, table)
            ref = entry(*spec.reference_pair)
            for key in reference:
                reference[key] += float(ref[key])  # type: ignore[arg-type]
        fixed = _fixed_costs(model, layers, shapes, spec)
        totals = {key: reference[key] + fixed.get(key, 0.0) for key in reference}
        annotations.MODEL_COST.set(
            model,
            {
                "spec": spec.name,
                "reference_pair": candidate_key(*spec.reference_pair),
                "reference": totals,
                "fixed": fixed,
                "candidates": [candidate_key(w, a) for w, a in pairs],
            },
        )
        return ir.passes.PassResult(model, modified=False)


def _fixed_costs(model: ir.Model, layers, shapes, spec) -> dict[str, float]:
    """Bytes and latency of everything no search changes: other tensors, other ops."""
    layer_nodes = {id(layer.node) for layer in layers}
    owned = {v.name for layer in layers for v in layer.node.inputs if v is not None and v.const_value is not None}
    size = sum(v.const_value.nbytes for name, v in model.graph.initializers.items() if name not in owned and v.const_value is not None)
    latency = 0.0
    for node in model.graph:
        if id(node) in layer_nodes or not node.outputs:
            continue
        latency += spec.overhead(node.op_type).time(math.prod(shapes.get(node.outputs[0].name, (0,))))
    return {"size": float(size), "latency_s": latency}
