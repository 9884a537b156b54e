"""``lower-qdq``: turn the chosen bits into QuantizeLinear/DequantizeLinear and low-bit weights.

This pass emits the lowering plan (``passes/lib/plan``), which decides for each layer and choice
the weight's container and scale form, the bias form, the activation quantizers and the kernel;
the size count, the evaluator and the cost pass read the same plan. Here is only how it is written:

- weights as integers in their real container type (INT2/INT4/INT8/INT16) behind a
  DequantizeLinear (per channel, per block, or at unit scale then a Mul), or packed into
  onnxruntime's ``MatMulNBits`` / ``GatherBlockQuantized``, or as int8 rows scaled after a Gather;
- a dynamic range (``w8adyn``) as ``quantize_dynamic`` writes it: DynamicQuantizeLinear, then
  MatMulInteger on int8 weight columns, Cast and Mul by the scales (onnxruntime's
  DynamicQuantizeMatMul), or an LSTM as DynamicQuantizeLSTM; ``uniform=w8adyn`` gives it to
  every layer that has the form and w8a8 to the other layers;
- a Q/DQ pair on a layer's activation input, calibrated from ``mpqc.calib.range``. Layers that read
  the same tensor at the same bit-width share one quantizer; a layer asking for other bits gets its
  own, so every layer sees exactly the numbers it was searched with. A grid narrower than its
  container gets a float Clip before QuantizeLinear;
- an integer kernel's output quantizer after a following Relu, which onnxruntime then drops,
  because a quantizer with zero point 0 already clips at zero;
- an int32 bias once the layer's input and weight both come out of a DequantizeLinear.

Layers inside If/Loop/Scan bodies are lowered like any other: their nodes go into the body, their
scales and zero points are main-graph initializers the body reads from the enclosing scope. A layer
in an If branch (or a Loop body) the calibration data never reached has no input range: it keeps
that input float and quantizes its weights only, and ``mpqc.report``'s ``weights_only`` lists it
with its reason. Every layer or weighted op left float is listed with its op and reason in
``left_float``. Bits the target's spec does not run are refused with the spec's list.

Everything else stays float: quantizing Add/Mul/Softmax/LayerNorm tensors is where onnxruntime's
default recipe loses accuracy (PEERS.md). Without calibrated ranges only weights are quantized, and
the report says so.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.ir.layers import Layer, constant_array, node_name, quantizable_layers
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.grid import (
    activation_grid,
    min_opset,
    weight_grid,
)
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.lib.opset import ensure_opset
from mpqc.passes.lib.plan import (
    CONTRIB_FORMS,
    BiasForm,
    LayerFacts,
    LayerPlan,
    WeightForm,
    dynamic_form,
    facts_of,
    plan_layer,
)
from mpqc.passes.lib.widen import widen_to_float32
from mpqc.passes.lower.emit import Emitter

__all__ = ["LowerQDQPass"]


@register
class LowerQDQPass(Pass):
    name = "lower-qdq"
    may_read = frozenset({annotations.BITS, annotations.CALIB_RANGE})
    writes = frozenset({annotations.BITS, annotations.REPORT})
    preserves = frozenset({annotations.PARETO, annotations.MODEL_COST})

    @dataclasses.dataclass(frozen=True)
    class Options:
        uniform: str = option(
            "", "one choice for every layer, e.g. w8a8 or w4a8 (empty: read mpqc.bits)"
        )
        act_signed: bool = option(False, "signed activations (slow on onnxruntime's CPU provider)")
        fuse_outputs: bool = option(
            True, "quantize 8-bit layers' outputs so the runtime fuses integer kernels"
        )
        weight_only: bool = option(
            False, "float activations; large constant MatMuls become onnxruntime's MatMulNBits"
        )
        block_size: int = option(
            0, "per-block weights along K for MatMul/Gemm (0: per channel; MatMulNBits default 32)"
        )
        accuracy_level: int = option(
            4,
            "MatMulNBits accuracy_level: 4 quantizes A to int8 per block (fast), 1 computes in "
            "float32",
        )

        def __post_init__(self) -> None:
            if self.uniform:
                Bits.parse(self.uniform)
            _ = self.layout  # validates block_size and accuracy_level

        @property
        def layout(self) -> WeightLayout:
            return WeightLayout(self.weight_only, self.block_size, self.accuracy_level)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        left_float = _without_quantized_form(model.graph)
        chosen = self._chosen(model)
        if not chosen:
            self.nothing_to_do("lower-qdq: no layer has bits to lower; the model stays float")
            self._report(model, 0, left_float, [])
            return ir.passes.PassResult(model, modified=bool(left_float))
        self._check_supported(chosen)
        layers = {layer.name: layer for layer in quantizable_layers(model.graph)}
        options = self.options
        facts = {name: facts_of(layers[name]) for name, _ in chosen}
        try:
            plans = [self._plan(facts[name], bits) for name, bits in chosen]
        except ValueError as exc:  # a dynamic range on a layer that has no such form
            raise PassInputError(str(exc)) from None
        # Layers that become onnxruntime contrib ops need no newer ai.onnx opset, only IR 10 for an
        # INT4 table.
        contrib = [plan for plan in plans if plan.form in CONTRIB_FORMS]
        grids = [
            weight_grid(plan.grid_bits)
            for plan in plans
            if plan.quantized_weight and plan.form not in CONTRIB_FORMS
        ]
        grids += [
            activation_grid(plan.abits, options.act_signed)
            for plan in plans
            if plan.abits != FLOAT_BITS
        ]
        blocked = any(plan.form is WeightForm.PER_BLOCK for plan in plans)
        ensure_opset(model, max(min_opset(*grids), 21 if blocked else 0))
        if contrib:
            model.ir_version = max(model.ir_version, 10)
            model.opset_imports.setdefault("com.microsoft", 1)
        # The upgrade may rebuild the graph: find the layers again by name.
        by_name = {layer.name: layer for layer in quantizable_layers(model.graph)}
        widen_to_float32(by_name[plan.name] for plan in plans)
        emitter = Emitter(model.graph, options.act_signed)
        ranges_missing, weights_only = False, []
        calibrated = _observed([model.graph])
        bodies_observed = _observed(list(model.graph.subgraphs()))
        narrowed = set()
        kernels, replaced = {}, {}
        for plan in plans:
            layer = by_name[plan.name]
            kernels[plan.name] = plan.kernel.value
            if plan.form is WeightForm.MATMUL_INTEGER or plan.form in CONTRIB_FORMS:
                replaced[plan.name] = layer.node.op_type
            annotations.BITS.set(
                layer.node, annotations.layer_bits(Bits(plan.wbits, plan.abits, plan.dynamic))
            )
            if plan.grid_bits != plan.wbits:
                narrowed.add((plan.wbits, plan.abits, plan.grid_bits))
            if plan.form is WeightForm.MATMUL_INTEGER:
                emitter.matmul_integer(layer, plan)
                continue
            if plan.form is WeightForm.DYNAMIC_LSTM:
                emitter.dynamic_lstm(layer, plan)
                continue
            if plan.dynamic:
                emitter.quantize_input_dynamic(layer)
                emitter.weight(layer, plan)
                continue
            # A contrib form replaces the layer's node, so its input quantizer goes in first.
            quantize_first = plan.form in CONTRIB_FORMS
            if not quantize_first:
                emitter.weight(layer, plan)
            if plan.input_quantizer is not None and not emitter.quantize_input(layer, plan.abits):
                # no calibrated range: the input stays float, and mpqc.bits says what was emitted
                annotations.BITS.set(layer.node, {"w": plan.wbits, "a": FLOAT_BITS})
                kernels[plan.name] = self._plan(
                    facts[plan.name], Bits(plan.wbits, FLOAT_BITS)
                ).kernel.value
                if layer.in_subgraph and calibrated:
                    weights_only.append(_unranged(layer, bodies_observed))
                else:
                    ranges_missing = True
            if quantize_first:
                emitter.weight(layer, plan)
        for plan in plans:
            if plan.output_quantizer:
                emitter.quantize_output(by_name[plan.name], plan.abits)
        for plan in plans:
            if plan.bias is BiasForm.INT32:
                emitter.quantize_bias(by_name[plan.name])
        for wbits, abits, grid_bits in sorted(narrowed):
            self.context.note(
                f"lower-qdq: {self.context.hw.name} runs w{wbits}a{abits} on a {grid_bits}-bit "
                "weight grid (its integer kernel would saturate on the full grid)"
            )
        if ranges_missing:
            self.context.note(
                "lower-qdq: some activations have no calibrated range and stay float "
                "(run calibrate with data)"
            )
        if weights_only:
            self.context.note(
                f"lower-qdq: {len(weights_only)} layer(s) in bodies have no calibrated input range "
                "and quantize their weights only; mpqc.report weights_only says why"
            )
        self._report(model, len(plans), left_float, weights_only, kernels, replaced)
        return ir.passes.PassResult(model, modified=True)

    def _plan(self, facts: LayerFacts, bits: Bits) -> LayerPlan:
        options = self.options
        return plan_layer(
            facts,
            bits.w,
            bits.a,
            spec=self.context.hw,
            layout=options.layout,
            act_signed=options.act_signed,
            fuse_outputs=options.fuse_outputs,
            dynamic=bits.dynamic,
        )

    def _check_supported(self, chosen: list[tuple[str, Bits]]) -> None:
        """Bits the target's spec does not run are refused, naming what it runs (``mpqc.bits`` may
        have been edited by hand, and ``uniform`` is not checked elsewhere when the pass runs
        alone)."""
        spec = self.context.hw
        if spec is None:
            return
        for name, choice in chosen:
            if choice.dynamic and not choice.float_weights and not spec.supports(*choice):
                raise PassInputError(
                    f"layer '{name}': {spec.name} does not run {choice} (no dynamic-range kernel "
                    "in the spec)"
                )
            for kind, bits, allowed in (
                ("weight", choice.w, spec.weight_bits),
                ("activation", choice.a, spec.act_bits),
            ):
                if bits != FLOAT_BITS and bits not in allowed:
                    raise PassInputError(
                        f"layer '{name}': {spec.name} does not run {bits}-bit {kind}s: it "
                        f"supports {', '.join(map(str, allowed))}"
                    )

    def _report(
        self,
        model: ir.Model,
        lowered: int,
        left_float: list[dict[str, str]],
        weights_only: list[dict[str, str]],
        kernels: dict[str, str] | None = None,
        replaced: dict[str, str] | None = None,
    ) -> None:
        """``lowered_layers``; ``kernels``, the kernel the plan names for each lowered layer (what
        the cost pass priced, which verify compares with what onnxruntime runs); ``ops``, the op of
        each layer whose node the lowering replaced by another (MatMulNBits, GatherBlockQuantized,
        a dynamic range's MatMulInteger chain, which ends in a Mul or an Add); ``left_float``:
        {layer, op, reason} for each weighted op left float; ``weights_only``: the same for each
        layer whose activations stayed float against its bits."""
        section: dict[str, object] = {"lowered_layers": lowered}
        if kernels:
            section["kernels"] = kernels
        if replaced:
            section["ops"] = replaced
        if weights_only:
            section["weights_only"] = weights_only
        if left_float:
            section["left_float"] = left_float
            self.context.note(
                f"lower-qdq: {len(left_float)} weighted op(s) stay float; mpqc.report left_float "
                "says why"
            )
        self.report(model, section)

    def _chosen(self, model: ir.Model) -> list[tuple[str, Bits]]:
        """(layer name, bits) to lower: ``uniform``, else ``mpqc.bits``; activations float under
        ``weight_only``."""
        lowered = []
        uniform = Bits.parse(self.options.uniform) if self.options.uniform else None
        for layer in quantizable_layers(model.graph):
            chosen = annotations.BITS.get(layer.node)
            if uniform is not None:
                # a dynamic range where the layer has one (MatMul/Gemm), the static pair elsewhere
                static = uniform.dynamic and not dynamic_form(facts_of(layer))
                bits = Bits(uniform.w, uniform.a) if static else uniform
            elif chosen is not None:
                bits = annotations.chosen_bits(chosen)
            else:
                continue
            if self.options.weight_only:
                bits = Bits(bits.w, FLOAT_BITS)
            if bits != (FLOAT_BITS, FLOAT_BITS):
                lowered.append((layer.name, bits))
        return lowered


def _observed(graphs: list[ir.Graph]) -> bool:
    """Whether calibrate observed any tensor of ``graphs``."""
    values = [v for g in graphs for v in (*g.inputs, *(out for node in g for out in node.outputs))]
    return any(annotations.CALIB_RANGE.has(value) for value in values)


def _unranged(layer: Layer, bodies_observed: bool) -> dict[str, str]:
    """The report line of a body layer without an input range though calibrate ran: its body never
    ran on the data, or (``bodies_observed`` False) no body tensor could be observed at all."""
    host, attribute = layer.scope[-1]
    if bodies_observed:
        body = {"then_branch": "then branch", "else_branch": "else branch"}.get(attribute, "body")
        runs = "ran" if host.op_type == "If" else "ran an iteration"
        reason = (
            f"the {body} of {host.op_type} '{node_name(host)}' never {runs} on the calibration "
            "data, so its input has no range: weights only"
        )
    else:
        reason = (
            "calibrate could not observe the tensors inside bodies (its note says why), so its "
            "input has no range: weights only"
        )
    return {"layer": layer.name, "op": layer.node.op_type, "reason": reason}


#: A constant this large (elements, 2-D or more) held by an op with no quantized form is worth a
#: report line.
_REPORTED_CONSTANT = 256
#: Ops that hold low-bit or integer constants by design.
_QUANTIZER_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Constant"})


def _without_quantized_form(graph: ir.Graph) -> list[dict[str, str]]:
    """Ops (main graph and bodies) holding a large float constant that no layer rule quantizes."""
    layers = {id(layer.node) for layer in quantizable_layers(graph)}
    found = []
    for g in (graph, *graph.subgraphs()):
        for node in g:
            if id(node) in layers or node.op_type in _QUANTIZER_OPS:
                continue
            for value in node.inputs:
                array = constant_array(value)
                if (
                    array is None
                    or array.ndim < 2
                    or array.size < _REPORTED_CONSTANT
                    or not np.issubdtype(array.dtype, np.floating)
                ):
                    continue
                assert value is not None
                found.append(
                    {
                        "layer": node.name or node.outputs[0].name or node.op_type,
                        "op": node.op_type,
                        "reason": f"{node.op_type} has no quantized form: its {array.size}-element "
                        f"constant '{value.name}' stays float",
                    }
                )
    return found
