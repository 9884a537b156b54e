"""``recover``: what fine-tuning gives the papers, post-training: GPTQ rounding and bias
correction.

Runs after ``search`` (or with ``uniform=w4a8``) and before ``lower-qdq``; reads ``mpqc.bits`` and,
through the lowering it observes, ``mpqc.calib.range``; needs calibration samples (a one-line
PassInputError without). For every layer whose weight grid has at most ``max_bits`` bits (default
7) and that is a matrix product (Conv — grouped and depthwise included — Gemm, MatMul with a
constant 2-D weight, in the main graph; Gather, LSTM, GRU and layers inside If/Loop/Scan bodies are
left as they are, with a note):

1. observe its input on calibration samples (``statistics``): ``inputs=sequential`` reads it in the
   model lowered with everything upstream already quantized and recovered (and the layer's own
   activation quantizer), so each layer compensates for what earlier layers did; ``inputs=float``
   reads the float model once for all layers (cheaper, what the MOHAQ beacons use);
2. round its weight with GPTQ (``gptq``) against the input Hessian, on the grid and in the weight
   layout the lowering plan gives its (w, a) on this target (``passes/lib/plan``: per channel, or
   per block along K with ``block_size`` / ``weight_only``, which must be the lowering's: the
   compiler passes the same options to both), optionally after a per-channel clip search;
3. correct its bias (``bias``): the mean output shift against the float model, measured on the same
   samples, folded into the bias (created for a Conv/Gemm without one; for a MatMul only when an
   Add of a constant vector follows it).

The exactness contract: recovery writes *float* weights that lie exactly on the layer's grid, each
channel reaching ``±qmax`` so that its scale recomputes to itself (``exact``), and changes biases.
``lower-qdq``, the evaluator and the size count then need no knowledge of recovery: the lowered
model equals the evaluator's simulation of the same configuration, as for any model.

Sequential observation costs one onnxruntime pass over the samples per *stage*: layers are split
into ``stages`` consecutive groups, each observed through the already recovered groups before it
(its own earlier members plainly rounded). ``stages`` at least the number of layers is
layer-by-layer GPTQ. Bias correction is then empirical (Nagel et al. 2019): a layer observed only
behind recovered layers corrects the whole shift between its mean output and the float model's,
upstream drift included; a layer observed behind members of its own stage corrects only its own
rounding's shift, since those members correct theirs (correcting both would count the upstream shift
twice — measured: it broke PP-LCNet).

Recovery turns models that plain low-bit rounding breaks into usable ones (bench/RESULTS.md §6). So
the compiler runs ``recover`` by default whenever there is calibration data and a layer may get
fewer than 8 weight bits; it changes nothing when no layer is below 8 bits (``max_bits``), so w8a8
compilations are unaffected."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import networkx as nx
import numpy as np
import onnx_ir as ir
from threadpoolctl import threadpool_limits

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.ir.graphs import data_flow
from mpqc.ir.layers import quantizable_layers
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.grid import (
    fake_quant_weight,
    quantize_weight_blocked,
    weight_grid,
    weight_scales,
)
from mpqc.passes.lib.layout import PER_CHANNEL, WeightLayout, block_axis
from mpqc.passes.lib.plan import layer_plan
from mpqc.passes.recover.bias import bias_slot
from mpqc.passes.recover.exact import on_grid
from mpqc.passes.recover.gptq import clip_scales, gptq_levels, output_error, peak_pins, round_levels
from mpqc.passes.recover.linear import LinearView, linear_view
from mpqc.passes.recover.statistics import InputStatistics, observe_float, observe_quantized

__all__ = ["RecoverPass", "Target", "recover_layer", "targets"]

Config = Mapping[str, tuple[int, int]]
#: Clip ratios the scale search tries (``clip_search``): 1 (no clip) down to 0.5.
CLIP_RATIOS = np.linspace(1.0, 0.5, 26)


@dataclasses.dataclass(frozen=True)
class Target:
    """A layer to recover: its linear view and the bits of the grid its weight is rounded to."""

    view: LinearView
    grid_bits: int
    #: Block size along K of the stored weight (0: per channel), as ``lower-qdq`` lays it out.
    block: int = 0

    @property
    def name(self) -> str:
        return self.view.layer.name


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One recovered layer: its output error (relative, on the observed inputs) rounded plainly and
    recovered."""

    name: str
    plain: float
    recovered: float
    #: What recovery could not do for this layer (reported as a note), if anything.
    note: str | None


@register
class RecoverPass(Pass):
    name = "recover"
    may_read = frozenset({annotations.BITS, annotations.CALIB_RANGE})
    writes = frozenset({annotations.REPORT})
    preserves = frozenset({annotations.ALL})

    @dataclasses.dataclass(frozen=True)
    class Options:
        uniform: str = option(
            "",
            "one choice for every layer, e.g. w4a8 (empty: read mpqc.bits), as lower-qdq's uniform",
        )
        inputs: Literal["sequential", "float"] = option(
            "sequential",
            "layer inputs seen through the quantized, recovered upstream (sequential) or the "
            "float model's",
        )
        stages: int = option(
            8,
            "sequential: onnxruntime passes over the samples; layers are observed in this many "
            "consecutive groups",
        )
        method: Literal["gptq", "round"] = option(
            "gptq",
            "weight rounding: GPTQ second-order rounding, or plain rounding (bias correction only)",
        )
        clip_search: bool = option(
            False,
            "search each channel's clip ratio (Hessian-weighted error) before rounding; "
            "per-channel grids only",
        )
        bias_correction: bool = option(
            True, "fold the mean output shift against float into the bias"
        )
        damping: float = option(
            0.01, "GPTQ: added to the Hessian's diagonal, as a fraction of its mean"
        )
        max_bits: int = option(7, "recover layers whose weight grid has at most this many bits")
        samples: int = option(64, "calibration samples observed")
        positions: int = option(
            512,
            "per sample, at most this many input rows of a layer enter its statistics (evenly "
            "strided)",
        )
        weight_only: bool = option(
            False,
            "lower-qdq's weight_only: the weight layout recovery rounds on must be the lowering's",
        )
        block_size: int = option(
            0, "lower-qdq's block_size: the weight layout recovery rounds on must be the lowering's"
        )

        @property
        def layout(self) -> WeightLayout:
            return WeightLayout(weight_only=self.weight_only, block_size=self.block_size)

        def __post_init__(self) -> None:
            if self.uniform:
                Bits.parse(self.uniform)
            if min(self.stages, self.samples, self.positions) < 1:
                raise ValueError(
                    f"stages, samples and positions must be at least 1, got {self.stages}, "
                    f"{self.samples} and {self.positions}"
                )
            if not 0.0 < self.damping < 1.0:
                raise ValueError(f"damping must be in (0, 1), got {self.damping}")
            _ = self.layout  # validates block_size

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        data = self.context.calibration
        if data is None or len(data) == 0:
            raise PassInputError(
                "recover needs calibration samples to observe each layer's inputs",
                field="calibration",
            )
        data.check(model)
        config = self._config(model)
        chosen, skipped = targets(
            model, config, self.context.hw, self.options.max_bits, self.options.layout
        )
        for name, why in skipped:
            self.context.note(f"recover: layer '{name}' left as rounded: {why}")
        if not chosen:
            self.nothing_to_do(
                f"recover: no layer has weights of {self.options.max_bits} bits or fewer to recover"
            )
            return ir.passes.PassResult(model, modified=False)
        samples = list(data)[: self.options.samples]
        # One BLAS thread, like the onnxruntime sessions (passes/lib/runtime.py): the same bytes on
        # any
        # machine, and on a shared one a multi-threaded Cholesky waits on busy cores (measured 30x
        # slower).
        with threadpool_limits(1, user_api="blas"):
            outcomes = self._recover(model, config, chosen, samples)
        self._report(model, outcomes)
        return ir.passes.PassResult(model, modified=True)

    def _config(self, model: ir.Model) -> dict[str, tuple]:
        if self.options.uniform:
            bits = Bits.parse(self.options.uniform)
            return {layer.name: bits for layer in quantizable_layers(model.graph)}
        config = {}
        for layer in quantizable_layers(model.graph):
            chosen = annotations.BITS.get(layer.node)
            if chosen is not None:
                config[layer.name] = annotations.chosen_bits(chosen)
        if not config:
            raise PassInputError(
                "recover: no layer has bits; run search first (or give recover{uniform=w4a8})"
            )
        return config

    def _recover(
        self, model: ir.Model, config: Config, chosen: list[Target], samples: Sequence
    ) -> list[Outcome]:
        views = {t.name: t.view for t in chosen}
        sequential = self.options.inputs == "sequential"
        reference = observe_float(model, views, samples, not sequential, self.options.positions)
        if not sequential:
            return [
                recover_layer(
                    model.graph, t, reference[t.name], reference[t.name].mean, self.options
                )
                for t in chosen
            ]
        order = {layer.name: i for i, layer in enumerate(quantizable_layers(model.graph))}
        flow = data_flow(model.graph)
        position = {id(flow.nodes[n]["node"]): n for n in flow.nodes}
        outcomes = []
        steps = self.context.steps("layers", len(chosen))
        for stage in np.array_split(np.arange(len(chosen)), min(self.options.stages, len(chosen))):
            members = [chosen[i] for i in stage]
            last = order[members[-1].name]
            upstream = {
                name: bits for name, bits in config.items() if order.get(name, last + 1) <= last
            }
            seen = observe_quantized(
                model,
                upstream,
                {t.name: t.view for t in members},
                samples,
                self.context.hw,
                self.options.layout,
                self.options.positions,
            )
            in_stage = {position[id(t.view.layer.node)] for t in members}
            for t in members:
                # A layer observed behind members of its own stage saw their plain, uncorrected
                # outputs;
                # those members correct their own shift, so it corrects only its own (no double
                # count).
                behind_member = bool(nx.ancestors(flow, position[id(t.view.layer.node)]) & in_stage)
                target_mean = seen[t.name].mean if behind_member else reference[t.name].mean
                outcomes.append(
                    recover_layer(model.graph, t, seen[t.name], target_mean, self.options)
                )
                steps.advance()
        return outcomes

    def _report(self, model: ir.Model, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.note:
                self.context.note(f"recover: layer '{outcome.name}': {outcome.note}")
        plain = float(np.mean([o.plain for o in outcomes]))
        recovered = float(np.mean([o.recovered for o in outcomes]))
        self.context.note(
            f"recover: {len(outcomes)} layers reconstructed ({self.options.method}, "
            f"{self.options.inputs} inputs); "
            f"mean layer output error {plain:.3g} plainly rounded -> {recovered:.3g}"
        )
        self.report(
            model,
            {
                "layers": len(outcomes),
                "method": self.options.method,
                "inputs": self.options.inputs,
                "layer_error": {
                    o.name: {"plain": o.plain, "recovered": o.recovered} for o in outcomes
                },
            },
        )


def targets(
    model: ir.Model,
    config: Config,
    hw: object,
    max_bits: int,
    layout: WeightLayout = PER_CHANNEL,
) -> tuple[list[Target], list[tuple[str, str]]]:
    """The layers of ``config`` to recover (in topological order), and (name, why) of those left
    out."""
    chosen, skipped = [], []
    for layer in quantizable_layers(model.graph):
        bits = Bits.of(config.get(layer.name, (FLOAT_BITS, FLOAT_BITS)))
        plan = layer_plan(layer, bits.w, bits.a, spec=hw, layout=layout, dynamic=bits.dynamic)
        if not plan.quantized_weight or plan.grid_bits > max_bits:
            continue
        view = linear_view(layer)
        if layer.in_subgraph:
            skipped.append((layer.name, "its input inside an If/Loop/Scan body is not observed"))
        elif isinstance(view, str):
            skipped.append((layer.name, view))
        elif len(layer.weight.uses()) != 1:
            skipped.append(
                (layer.name, f"its weight '{layer.weight.name}' is shared with another node")
            )
        elif layer.activation is None or not layer.activation.name:
            skipped.append((layer.name, "its input has no name to observe"))
        else:
            chosen.append(Target(view, plan.grid_bits, plan.block))
    return chosen, skipped


def recover_layer(
    graph: ir.Graph,
    target: Target,
    seen: InputStatistics,
    target_mean: np.ndarray,
    options: RecoverPass.Options,
) -> Outcome:
    """Reconstruct one layer in place: its weight on the exact grid, then its bias (module
    docstring).

    ``seen`` are the statistics of the inputs the layer will see; bias correction makes its mean
    output on them equal the float layer's mean output on inputs of mean ``target_mean``.
    """
    view, bits, block = target.view, target.grid_bits, target.block
    layer = view.layer
    weight = layer.weight_array()
    axis, along = layer.channel_axis, block_axis(layer) or 0
    qmax = weight_grid(bits).qmax
    matrix = view.matrix(weight).astype(np.float64)
    assert seen.hessian is not None
    if (
        block
    ):  # blocks run along K, the matrix's columns: scales (1, N, blocks) repeated over each block
        stored = quantize_weight_blocked(weight, bits, along, block)[1]
        scales = np.repeat(view.matrix(stored).astype(np.float64), block, axis=2)[
            :, :, : matrix.shape[2]
        ]
    else:
        per_row = weight_scales(weight, bits, axis).astype(np.float64).reshape(matrix.shape[:2])
        if options.clip_search:
            per_row = clip_scales(matrix, seen.hessian, qmax, CLIP_RATIOS)
        scales = np.broadcast_to(per_row[..., None], matrix.shape)
    if options.method == "gptq":
        levels = gptq_levels(
            matrix,
            seen.hessian,
            scales,
            qmax,
            peak_pins(matrix, block or matrix.shape[2]),
            damping=options.damping,
        )
    else:
        levels = round_levels(matrix, scales, qmax)
    plain = view.matrix(fake_quant_weight(weight, bits, axis, block, along)).astype(np.float64)
    plain_error = output_error(matrix, plain, seen.hessian)
    del plain  # a wide layer's matrices are big: each goes once used (``gptq_levels``)
    stored_scales = (
        view.weight_from(scales[:, :, ::block]) if block else scales[:, :, 0].reshape(-1)
    )
    recovered = on_grid(
        view.weight_from(levels).astype(np.int64), stored_scales, bits, axis, block, along
    )
    del levels
    if (
        recovered is None
    ):  # no float32 scale reproduces itself (exact.py): keep the weight, lower-qdq rounds it
        return Outcome(
            target.name, plain_error, plain_error, "its scale has no exact float32 fixed point"
        )
    new_matrix = view.matrix(recovered).astype(np.float64)
    layer.weight.const_value = ir.tensor(recovered, name=layer.weight.name)
    outcome = Outcome(
        target.name, plain_error, output_error(matrix, new_matrix, seen.hessian), None
    )
    if options.bias_correction:
        slot = bias_slot(layer, view.out_channels)
        if isinstance(slot, str):
            return dataclasses.replace(outcome, note=f"bias not corrected: {slot}")
        shift = np.einsum("grc,gc->gr", matrix, target_mean) - np.einsum(
            "grc,gc->gr", new_matrix, seen.mean
        )
        slot.shift(graph, shift.reshape(-1), f"{layer.name}.bias")
    return outcome
