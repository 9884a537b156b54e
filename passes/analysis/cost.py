"""``cost``: what each layer costs on the target chip at every candidate bit-width.

For every quantizable layer and every (weight bits, activation bits) the spec runs — intersected
with the user's ``--wbits/--abits``, plus the dynamic-range choices (``w8adyn``) the spec prices
for the layers that have that form (MatMul, plain Gemm) — it prices the lowering plan
(``passes/lib/plan``) in ``mpqc.cost``: latency, energy and BOPs from the spec's roofline cost
model for the pair the plan runs (``priced_pair``), and the plan's bytes; plus the float cost.
Model totals (``mpqc.cost.total``) add what stays float: every other initializer's bytes, every
other op's overhead (a MatMul of two computed tensors also its float multiply-accumulates) and
the runtime's per-call cost, so a size budget like ``0.25x`` is a fraction
of the whole written model, not of the layers alone, and a latency total is what one inference
takes. A layer inside a Loop or Scan body costs time and energy on every iteration: it is priced
times the body's trip count where the model fixes it (a Loop's constant ``M``, a Scan's static
length), else once, with a note; its bytes are stored once (``describe.trip_count``).

The cost model prices a layer as the lowering emits it, which depends on its neighbours; this pass
reads them off the graph (``_Neighbourhood``): the activations right after a layer (free inside a
float kernel, separate float ops after an integer one), whether its input arrives from another
integer layer and whether only integer layers read its output (then no Quantize/DequantizeLinear
runs between them: onnxruntime keeps the tensor in uint8 through Relu, MaxPool, Concat, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.hwspecs import CostModel, HardwareSpec, LayerDesc, UnsupportedPrecisionError
from mpqc.ir import annotations
from mpqc.ir.layers import Layer, quantizable_layers
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.describe import describe, static_shapes, trip_count
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.lib.plan import (
    Kernel,
    LayerFacts,
    LayerPlan,
    dynamic_form,
    facts_of,
    plan_layer,
    stored_bytes,
)

__all__ = ["CostPass", "candidate_key", "predicted_total", "priced_kernel", "priced_pair"]


def candidate_key(wbits: int | None, abits: int | None, dynamic: bool = False) -> str:
    """A cost table's key: ``float``, or the pair with a float operand counted as 32 bits."""
    if wbits is None and abits is None:
        return "float"
    return str(Bits(wbits or FLOAT_BITS, abits or FLOAT_BITS, dynamic))


def priced_pair(plan: LayerPlan) -> tuple[int | None, int | None]:
    """The (weight bits, activation bits) the spec's cost model prices for ``plan`` (None: float).

    The spec keys its kernels by the chosen bits (a narrowed grid is the same kernel), and by the
    activation bits that apply: none where the plan keeps activations float."""
    return (
        plan.wbits if plan.quantized_weight else None,
        plan.abits if plan.abits != FLOAT_BITS else None,
    )


def predicted_total(
    model: ir.Model, bits: Mapping[str, tuple], objective: str = "latency_s"
) -> float | None:
    """The cost pass's total of one configuration of ``model`` (priced by this pass): the fixed
    part plus each layer's entry for its ``bits`` (float for a layer not named), the sum the search
    minimizes; None when a layer has no entry for its bits (a pair the spec does not price)."""
    total = float(annotations.MODEL_COST.get(model)["fixed"][objective])
    for layer in quantizable_layers(model.graph):
        table = annotations.COST.get(layer.node)
        if table is None:
            continue
        chosen = Bits.of(bits.get(layer.name, (FLOAT_BITS, FLOAT_BITS)))
        entry = table.get("float" if chosen == (FLOAT_BITS, FLOAT_BITS) else str(chosen))
        if entry is None:
            return None
        total += float(entry[objective])
    return total


#: The plan's kernels that read the stored low-bit weight themselves, by onnxruntime op name.
_PACKED_KERNELS = {
    Kernel.MATMUL_NBITS: "MatMulNBits",
    Kernel.GATHER_BLOCK_QUANTIZED: "GatherBlockQuantized",
    Kernel.DYNAMIC_LSTM: "DynamicQuantizeLSTM",
}


def priced_kernel(plan: LayerPlan) -> str | None:
    """The packed kernel the cost model prices for ``plan`` (``CostModel.kernel``), or None: the
    pair's own kernel. MatMulNBits where the plan emits it and where onnxruntime fuses a
    DequantizeLinear -> MatMul into it (16-bit activations; float ones the cost pass never
    prices); DynamicQuantizeLSTM, which reads its int8 weights itself."""
    return _PACKED_KERNELS.get(plan.kernel)


def _priced(
    layer: Layer,
    facts: LayerFacts,
    desc: LayerDesc,
    model_cost: CostModel,
    layout: WeightLayout,
    trips: int,
    wbits: int | None,
    abits: int | None,
    dynamic: bool = False,
) -> dict[str, object]:
    """One candidate's ``mpqc.cost`` entry: time and energy from the spec's roofline for the pair
    the plan runs, times the ``trips`` one inference runs the layer, size from the plan's bytes."""
    plan = plan_layer(
        facts,
        wbits or FLOAT_BITS,
        abits or FLOAT_BITS,
        spec=model_cost.spec,
        layout=layout,
        dynamic=dynamic,
    )
    cost = model_cost.layer_cost(
        desc, *priced_pair(plan), packed_kernel=priced_kernel(plan), dynamic=plan.dynamic
    )
    return _entry(cost, stored_bytes(layer, plan), trips)


def _entry(cost, size: int, trips: int) -> dict[str, object]:
    return {
        "latency_s": cost.latency_s * trips,
        "energy_j": cost.energy_j * trips,
        "size": size,
        "act_bytes": cost.act_bytes * trips,
        "bops": cost.bops * trips,
        "bound": cost.bound,
        "native": cost.native,
    }


@register
class CostPass(Pass):
    name = "cost"
    writes = frozenset({annotations.COST, annotations.MODEL_COST})
    preserves = frozenset({annotations.ALL})

    @dataclasses.dataclass(frozen=True)
    class Options:
        block_size: int = option(
            0,
            "price MatMul/Gemm weights per block of K as lower-qdq{block_size} stores them (0: "
            "per channel)",
        )
        dynamic: bool = option(
            True,
            "offer dynamic activation ranges (w8adyn) to the MatMul/Gemm layers that have the "
            "form, where the spec prices them",
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        spec = self.context.hw
        if spec is None:
            raise PassInputError(
                "the cost pass needs a hardware spec: a bundled name or a spec .yaml", field="hw"
            )
        layers = quantizable_layers(model.graph)
        if not layers:
            raise PassInputError(
                "the model has no quantizable layer (Conv, Gemm, MatMul with a constant weight, "
                "...)"
            )
        shapes = static_shapes(model, self.context)
        neighbourhood = _Neighbourhood(layers, spec)
        described = [(layer, neighbourhood.describe(layer, shapes)) for layer in layers]
        model_cost = CostModel(spec)
        pairs = spec.supported_pairs(self.context.wbits, self.context.abits)
        if not pairs:
            raise PassInputError(
                f"{spec.name} runs none of the requested bit-widths: weights "
                f"{', '.join(map(str, spec.weight_bits))}, "
                f"activations {', '.join(map(str, spec.act_bits))}"
            )
        dynamic_pairs = (
            spec.dynamic_pairs(self.context.wbits, self.context.abits)
            if self.options.dynamic
            else []
        )
        reference = {"latency_s": 0.0, "energy_j": 0.0, "size": 0.0, "bops": 0.0}
        layout = WeightLayout(block_size=self.options.block_size)
        unknown_trips = set()
        offered = set()
        for layer, desc in described:
            trips, unknown = trip_count(layer, shapes)
            if unknown is not None:
                unknown_trips.add(unknown)
            facts = facts_of(layer)
            entry = functools.partial(_priced, layer, facts, desc, model_cost, layout, trips)
            table = {candidate_key(w, a): entry(w, a) for w, a in pairs}
            if dynamic_form(facts):
                for bits in dynamic_pairs:
                    table[str(bits)] = entry(bits.w, bits.a, True)
                    offered.add(bits)
            try:
                table["float"] = entry(None, None)
            except UnsupportedPrecisionError:
                pass  # the chip has no float path; the reference is then w8a8
            annotations.COST.set(layer.node, table)
            ref = entry(*spec.reference_pair)
            for key in reference:
                reference[key] += float(ref[key])  # type: ignore[arg-type]
        for host in sorted(unknown_trips):
            self.context.note(
                f"cost: {host} has no known trip count: the layers in its body are priced as "
                "running once per inference"
            )
        fixed = _fixed_costs(model, neighbourhood, shapes, spec)
        totals = {key: reference[key] + fixed.get(key, 0.0) for key in reference}
        annotations.MODEL_COST.set(
            model,
            {
                "spec": spec.name,
                "reference_pair": candidate_key(*spec.reference_pair),
                "reference": totals,
                "fixed": fixed,
                "candidates": [candidate_key(w, a) for w, a in pairs]
                + [str(bits) for bits in dynamic_pairs if bits in offered],
                "block_size": layout.block_size,
            },
        )
        return ir.passes.PassResult(model, modified=False)


#: Ops onnxruntime runs on uint8 tensors between two integer kernels when the spec has an integer
#: instruction for them (QDQ propagation); Relu disappears into the zero point of the quantizer.
_PASS_THROUGH = frozenset(
    {"MaxPool", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
)


class _Neighbourhood:
    """What the cost model needs to know about a layer's surroundings (see the module docstring)."""

    def __init__(self, layers: list[Layer], spec: HardwareSpec) -> None:
        self.spec = spec
        self.layer_nodes = {id(layer.node): layer for layer in layers}
        self.activations = spec.fused_activations.get(
            "float", frozenset()
        ) | spec.fused_activations.get("integer", frozenset())
        self.epilogue_nodes: set[int] = set()

    def describe(self, layer: Layer, shapes) -> LayerDesc:
        epilogue = self._epilogue(layer.node)
        self.epilogue_nodes.update(id(node) for node in epilogue)
        return dataclasses.replace(
            describe(layer, shapes),
            epilogue=tuple(node.op_type for node in epilogue),
            input_from_layer=layer.activation is not None and self._from_layer(layer.activation),
            output_to_layers=self._to_layers(layer.node.outputs[0]),
            input_ops=tuple(node.op_type for node in self._input_ops(layer)),
        )

    def _input_ops(self, layer: Layer) -> list[ir.Node]:
        """Data-movement ops right before the layer's activation input that feed only it, nearest
        last."""
        ops: list[ir.Node] = []
        value = layer.activation
        while value is not None and len(value.uses()) == 1 and not value.is_graph_output():
            producer = value.producer()
            data = (
                [v for v in producer.inputs if v is not None and v.const_value is None]
                if producer is not None
                else []
            )
            if (
                producer is None
                or len(data) != 1
                or producer.op_type not in _PASS_THROUGH
                or not self.spec.runs_integer(producer.op_type)
            ):
                break
            ops.insert(0, producer)
            value = producer.inputs[0]
        return ops

    def _passes_integer(self, node: ir.Node) -> bool:
        return node.op_type == "Relu" or (
            node.op_type in _PASS_THROUGH and self.spec.runs_integer(node.op_type)
        )

    def _epilogue(self, node: ir.Node) -> list[ir.Node]:
        """The chain of activations that only the layer feeds, in order."""
        chain = []
        value = node.outputs[0]
        while len(value.uses()) == 1 and not value.is_graph_output():
            user = value.uses()[0].node
            if user.op_type not in self.activations or id(user) in self.layer_nodes:
                break
            chain.append(user)
            value = user.outputs[0]
        return chain

    def _from_layer(self, value: ir.Value) -> bool:
        producer = value.producer()
        if producer is None:
            return False
        if id(producer) in self.layer_nodes:
            return True
        if not self._passes_integer(producer):
            return False
        data = [v for v in producer.inputs if v is not None and v.const_value is None]
        return bool(data) and all(self._from_layer(v) for v in data)

    def _to_layers(self, value: ir.Value) -> bool:
        if value.is_graph_output() or not value.uses():
            return False
        for use in value.uses():
            layer = self.layer_nodes.get(id(use.node))
            if layer is not None:
                if use.idx != layer.activation_index:
                    return False
            elif not (
                self._passes_integer(use.node)
                and all(self._to_layers(out) for out in use.node.outputs)
            ):
                return False
        return True


def _fixed_costs(
    model: ir.Model, neighbourhood: _Neighbourhood, shapes, spec: HardwareSpec
) -> dict[str, float]:
    """Bytes and latency of everything no search changes: other tensors, other ops, the call
    itself."""
    layers = list(neighbourhood.layer_nodes.values())
    owned = {
        v.name
        for layer in layers
        for v in layer.node.inputs
        if v is not None and v.const_value is not None
    }
    graphs = (model.graph, *model.graph.subgraphs())
    size = sum(
        v.const_value.nbytes
        for g in graphs
        for name, v in g.initializers.items()
        if name not in owned and v.const_value is not None
    )
    latency = spec.session_overhead
    priced = neighbourhood.layer_nodes.keys() | neighbourhood.epilogue_nodes
    for node in model.graph:
        if id(node) in priced or not node.outputs:
            continue
        latency += _op_seconds(node, shapes, spec)
    return {"size": float(size), "latency_s": latency}


def _op_seconds(node: ir.Node, shapes, spec: HardwareSpec) -> float:
    """What an op no search changes takes: its overhead per output element (the spec's numbers
    for LayerNormalization, Softmax, Erf...), and for a MatMul of two computed tensors (attention's
    scores and their weighted sum) its multiply-accumulates at the float rate."""
    elements = math.prod(shapes.get(node.outputs[0].name, (0,)))
    seconds = spec.overhead(node.op_type).time(elements)
    first = node.inputs[0] if node.inputs else None
    if node.op_type == "MatMul" and spec.runs_float and first is not None:
        k = shapes.get(first.name or "", ())
        if k:
            seconds += elements * k[-1] / spec.precision(None, None).throughput
    return seconds
