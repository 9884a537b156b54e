"""The configurable evaluator: any bit configuration, one onnxruntime session, the numbers
lower-qdq ships.

Sensitivity analysis and the searches ask the same question thousands of times: *what does the model
output if layer l runs at (w, a) bits and the rest at their own choices?* Lowering a model and
opening an onnxruntime session per question costs far more than running it, so the ``Evaluator``
builds one fake-quantized graph in which the bit configuration is an *input* (``graph.py``), and
feeds each configuration's controls from the lowering plan (``passes/lib/plan``): the weight grid
and form, which quantizers are on, the int32 bias, the int8 rounding of the input of the
MatMulNBits mpqc emits. So ``Evaluator.run(config)`` equals what onnxruntime computes for the model
``lower-qdq`` emits with the same ``mpqc.bits``, executed as written. With graph optimizations on,
onnxruntime runs 8-bit layers as integer kernels (QLinearConv...) whose requantization may round an
output level differently, by up to an LSB of the output quantizer, and fuses a DequantizeLinear ->
MatMul with float activations into MatMulNBits at accuracy level 4 (the plan names that kernel;
``graph.py`` says why it is not simulated). The float outputs are computed once and cached as the
reference.

One layer at a time (``errors`` on configurations that quantize a single layer, what sensitivity
analysis asks), the float prefix is not recomputed (``sessions.py``, ``cut.py``); the work goes to
an executor or local worker processes when it pays (``workers.py``); ``measures.py`` says how far
outputs are.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from mpqc.core.bits import DYNAMIC_BITS, FLOAT_BITS, Bits
from mpqc.ir.layers import quantizable_layers
from mpqc.passes.lib.evaluator import cut
from mpqc.passes.lib.evaluator.graph import PREFIX, LayerSites, Site, build
from mpqc.passes.lib.evaluator.measures import Measure, Outputs, output_error
from mpqc.passes.lib.evaluator.sessions import Config, Sessions
from mpqc.passes.lib.evaluator.store import WeightStore
from mpqc.passes.lib.evaluator.workers import in_worker
from mpqc.passes.lib.grid import activation_grid, activation_qparams
from mpqc.passes.lib.layout import PER_CHANNEL, WeightLayout
from mpqc.passes.lib.plan import (
    BiasForm,
    LayerPlan,
    WeightForm,
    dynamic_form,
    facts_of,
    int32_bias,
    plan_layer,
)

__all__ = ["Config", "Evaluator", "batch_first"]

#: Activation bits a configuration may ask for.
_ABITS = (*range(2, 17), FLOAT_BITS)


class Evaluator(Sessions):
    """One session that evaluates any bit configuration of ``model`` on ``samples`` (see the
    module docstring).

    ``wbits`` are the weight bit-widths it can select (each costs one copy of the weights in
    memory); activations take any bit-width from 2 to 16. Layers are named as
    ``quantizable_layers`` names them. ``batch`` > 1 concatenates up to that many samples of the
    same shape along axis 0 into one run (for models whose first dimension is the batch; samples
    are grouped by shape, in order of first appearance, so variable-length text or width-varying
    lines batch by length without padding): far less per-run overhead, and the built-in measures,
    which are per-row means or sums, do not change. A callable measure sees the batches as its
    samples.
    """

    def __init__(
        self,
        model: ir.Model,
        samples: Iterable[Mapping[str, np.ndarray]],
        *,
        wbits: Sequence[int] = (2, 3, 4, 8),
        act_signed: bool = False,
        fuse_outputs: bool = True,
        executor: concurrent.futures.Executor | None = None,
        batch: int = 1,
        spec: Any = None,
        layout: WeightLayout = PER_CHANNEL,
    ) -> None:
        self.samples = _batched([dict(s) for s in samples], batch)
        self.act_signed = act_signed
        self.executor = executor
        layers = quantizable_layers(model.graph)
        facts = {layer.name: facts_of(layer) for layer in layers}
        # The lowering plan of every layer at every choice, as a plain table: IR layers and the spec
        # do not travel to worker processes.
        self._lowering: dict[Bits, dict[str, LayerPlan]] = {}
        for name, layer_facts in facts.items():
            for w in (*wbits, FLOAT_BITS):
                for a in _ABITS:
                    self._lowering.setdefault(Bits(w, a), {})[name] = plan_layer(
                        layer_facts,
                        w,
                        a,
                        spec=spec,
                        layout=layout,
                        act_signed=act_signed,
                        fuse_outputs=fuse_outputs,
                    )
                if dynamic_form(layer_facts) and not layout.weight_only:
                    with contextlib.suppress(ValueError):  # only 8-bit weights run dynamically
                        self._lowering.setdefault(Bits(w, DYNAMIC_BITS, True), {})[name] = (
                            plan_layer(layer_facts, w, DYNAMIC_BITS, spec=spec, dynamic=True)
                        )
        dynamic = frozenset(
            name for bits, plans in self._lowering.items() if bits.dynamic for name in plans
        )
        # The plans' grids: the target may round some pairs' weights to a narrower grid, and a
        # configuration is simulated on the grid lower-qdq lowers it to.
        prepared = tuple(
            sorted(
                {
                    plan.grid_bits
                    for plans in self._lowering.values()
                    for plan in plans.values()
                    if plan.quantized_weight
                }
            )
        )
        blocks: dict[str, set[int]] = {}
        for plans in self._lowering.values():
            for name, plan in plans.items():
                if plan.int8_input_block is not None:
                    blocks.setdefault(name, set()).add(plan.int8_input_block)
        # Where the big tensors are (store.py), and the graph, samples and reference for workers.
        self._store = WeightStore()
        proto, sites = build(
            model,
            prepared,
            fuse_outputs,
            layout,
            facts,
            self._store,
            spec,
            dynamic,
            {name: tuple(sorted(found)) for name, found in blocks.items()},
        )
        self._sites = {site.name: site for site in sites}
        self._calibrated_sites = self._sites
        self.layers = [site.name for site in sites]
        self.output_names = [o.name for o in proto.graph.output]
        self._reference_seconds = 0.0
        self._session: ort.InferenceSession | None = None
        self._reference: list[Outputs] | None = None
        self._parsed: onnx.ModelProto | None = proto
        self._float: cut.Fixed | None = None  # every control fixed at float (layer_errors' prefix)
        self._slices: dict[tuple[str, int], onnx.TensorProto] = {}  # weight stacks' entries

    # -- running ------------------------------------------------------------------------------

    def run(self, config: Config) -> list[Outputs]:
        """Per sample, the model's outputs (in graph order) under ``config``."""
        controls = self._controls(config)
        session = self._get_session()
        return [session.run(self.output_names, {**sample, **controls}) for sample in self.samples]

    def error(self, config: Config, measure: Measure = "mse") -> float:
        """How far ``config``'s outputs are from float (see ``output_error``)."""
        return output_error(self.reference, self.run(config), measure)

    def errors(
        self,
        configs: Sequence[Config],
        measure: Measure = "mse",
        advance: Callable[[int], None] | None = None,
    ) -> list[float]:
        """``error`` of each configuration, in order.

        Configurations that quantize a single layer run on that layer's suffix after one float run
        of the prefix per group of layers (``layer_errors``); the others run the whole graph. The
        work goes to ``executor``; without one, to local worker processes when it pays (see
        ``_executor``), else it runs here. ``advance`` is told how many configurations each
        finished job evaluated (progress for a person waiting).
        """
        by_layer: dict[str, list[int]] = {}
        whole: list[int] = []
        for i, config in enumerate(configs):
            moved = [
                name for name, bits in config.items() if tuple(bits) != (FLOAT_BITS, FLOAT_BITS)
            ]
            if len(moved) == 1:
                by_layer.setdefault(moved[0], []).append(i)
            else:
                whole.append(i)
        ordered = [name for name in self.layers if name in by_layer]
        groups = [
            ordered[i : i + cut.LAYERS_PER_PREFIX]
            for i in range(0, len(ordered), cut.LAYERS_PER_PREFIX)
        ]
        jobs: list[tuple[str, Any]] = [
            ("layer_errors", [(name, [dict(configs[i]) for i in by_layer[name]]) for name in group])
            for group in groups
        ]
        jobs += [("error", dict(configs[i])) for i in whole]
        sizes = [sum(len(by_layer[name]) for name in group) for group in groups] + [1] * len(whole)

        def counted(outcome: Any, size: int) -> Any:
            if advance is not None:
                advance(size)
            return outcome

        with self._executor(len(jobs), len(configs)) as executor:
            if executor is None:
                outcomes = [
                    counted(getattr(self, method)(argument, measure), size)
                    for (method, argument), size in zip(jobs, sizes, strict=True)
                ]
            else:
                futures = [
                    executor.submit(in_worker, self, method, argument, measure)
                    for method, argument in jobs
                ]
                outcomes = [
                    counted(future.result(), size)
                    for future, size in zip(futures, sizes, strict=True)
                ]
        results: list[float] = [0.0] * len(configs)
        for group, group_errors in zip(groups, outcomes, strict=False):  # then the wholes
            for name, layer_errors in zip(group, group_errors, strict=True):
                for i, error in zip(by_layer[name], layer_errors, strict=True):
                    results[i] = error
        for i, error in zip(whole, outcomes[len(groups) :], strict=True):
            results[i] = error
        return results

    def set_ranges(self, ranges: Mapping[str, tuple[float, float]]) -> None:
        """Quantize each named tensor on the given clip range (lo, hi) instead of its calibrated
        one, until the next call; ``{}`` restores the calibrated ranges.

        What a choice among range estimators compares (``passes/analysis/range_choice.py``): the
        ranges are feeds of the one graph, so nothing is rebuilt."""
        self._sites = {
            name: dataclasses.replace(
                sites,
                input_site=_ranged(sites.input_site, ranges),
                output_site=_ranged(sites.output_site, ranges),
            )
            for name, sites in self._calibrated_sites.items()
        }
        self._payload = None  # shipped by value, the state carries the sites: pickled anew

    def tensors_read(self, layer: str) -> tuple[str, ...]:
        """The tensors whose ranges the quantizers of ``layer``'s choices read."""
        sites = self._sites[layer]
        return tuple(
            site.tensor for site in (sites.input_site, sites.output_site) if site is not None
        )

    def objective(self, measure: Measure = "mse") -> Callable[[Config], float]:
        """``config -> error``: the exact evaluation a search calls."""
        return lambda config: self.error(config, measure)

    # -- the control inputs -------------------------------------------------------------------

    def _plan(self, name: str, choice: tuple) -> LayerPlan:
        bits = Bits.of(choice)
        plan = self._lowering.get(bits, {}).get(name)
        if plan is None:
            if bits.dynamic and Bits(bits.w, bits.a) in self._lowering:
                raise ValueError(f"layer {name!r}: no dynamic-range form at {bits}")
            prepared = sorted({b.w for b in self._lowering} - {FLOAT_BITS})
            raise ValueError(
                f"layer {name!r}: weight bits {bits.w} not prepared; this evaluator was built for "
                f"{prepared}"
            )
        return plan

    def _controls(
        self, config: Config, layers: Collection[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The control inputs that make the fake-quant graph compute ``config``'s lowering plan:
        those of ``layers`` (default: every layer), and of the layers feeding them, whose output
        quantizers' scales their int32 biases read."""
        unknown = sorted(set(config) - set(self._sites))
        if unknown:
            raise KeyError(
                f"no quantizable layer named {', '.join(map(repr, unknown))} "
                f"(layers: {', '.join(self.layers)})"
            )
        wanted = list(self._sites) if layers is None else list(layers)
        upstream = [self._sites[name].upstream for name in wanted]
        named = dict.fromkeys(wanted + [self.layers[i] for i in upstream if i is not None])
        feeds: dict[str, np.ndarray] = {}
        plans = {
            name: self._plan(name, config.get(name, (FLOAT_BITS, FLOAT_BITS))) for name in named
        }
        input_scale: dict[int, np.float32 | None] = {}
        output_scale: dict[int, np.float32 | None] = {}
        for name in named:
            sites, plan = self._sites[name], plans[name]
            feeds[f"{PREFIX}.{sites.index}.w"] = np.array(
                self._weight_choice(sites, plan), np.int64
            )
            input_scale[sites.index] = self._site_feeds(
                feeds,
                sites.input_site,
                plan.abits if plan.input_quantizer else FLOAT_BITS,
                plan.dynamic and plan.input_quantizer is not None,
            )
            if sites.dynamic_switch is not None:
                feeds[sites.dynamic_switch] = np.array(plan.dynamic)
            if sites.kernel_switch is not None:
                feeds[sites.kernel_switch] = np.array(plan.form is WeightForm.DYNAMIC_LSTM)
            for block, switch in sites.int8_blocks:
                feeds[switch] = np.array(plan.int8_input_block == block)
            output_scale[sites.index] = self._site_feeds(
                feeds, sites.output_site, plan.abits if plan.output_quantizer else FLOAT_BITS
            )
        for name in wanted:
            sites, plan = self._sites[name], plans[name]
            if sites.bias is None:
                continue
            # The plan's int32 bias needs an input that arrives dequantized: its own input
            # quantizer, else the output quantizer of the layer feeding it.
            x_scale = input_scale[sites.index]
            if x_scale is None and sites.upstream is not None:
                x_scale = output_scale[sites.upstream]
            bias = sites.bias
            if plan.bias is BiasForm.INT32 and x_scale is not None:
                w_scale = sites.weight_scales[sites.wbits.index(plan.grid_bits)]
                assert w_scale is not None  # per channel
                levels, scale = int32_bias(sites.bias, x_scale, w_scale)
                bias = (levels.astype(np.float32) * scale).astype(np.float32)
            feeds[f"{PREFIX}.{sites.index}.bias"] = bias
        return feeds

    @staticmethod
    def _weight_choice(sites: LayerSites, plan: LayerPlan) -> int:
        """The index of the plan's weight grid in the layer's weight stack (the last: float)."""
        if not plan.quantized_weight:
            return len(sites.wbits)
        return sites.wbits.index(plan.grid_bits)

    def _site_feeds(
        self, feeds: dict[str, np.ndarray], site: Site | None, bits: int, dynamic: bool = False
    ) -> np.float32 | None:
        """Fill one quantizer's inputs; returns its (static) scale when it is on. A dynamic one
        needs no calibrated range: the graph measures it (its scale and zero point fed here are
        not used)."""
        if site is None:
            return None
        on = bits != FLOAT_BITS and (site.clip_range is not None or dynamic)
        scale, zero_point, qmin, qmax = np.float32(1.0), 0, 0, 0
        if dynamic:
            grid = activation_grid(bits)
            qmin, qmax = grid.qmin, grid.qmax
        elif on:
            assert site.clip_range is not None
            grid = activation_grid(bits, self.act_signed)
            scale, zero_point = activation_qparams(*site.clip_range, grid)
            qmin, qmax = grid.qmin, grid.qmax
        feeds[f"{site.prefix}.on"] = np.array(on)
        feeds[f"{site.prefix}.scale"] = np.array(scale, np.float32)
        feeds[f"{site.prefix}.zp"] = np.array(zero_point, np.float32)
        feeds[f"{site.prefix}.qmin"] = np.array(qmin, np.float32)
        feeds[f"{site.prefix}.qmax"] = np.array(qmax, np.float32)
        return np.float32(scale) if on and not dynamic else None


def _ranged(site: Site | None, ranges: Mapping[str, tuple[float, float]]) -> Site | None:
    if site is None or site.tensor not in ranges:
        return site
    return dataclasses.replace(site, clip_range=ranges[site.tensor])


def _batched(samples: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    """Samples of one shape concatenated along axis 0, ``batch`` at most per run (no padding)."""
    if batch <= 1:
        return samples
    by_shape: dict[tuple[tuple[str, tuple[int, ...], str], ...], list[dict[str, np.ndarray]]] = {}
    for sample in samples:
        key = tuple(
            (name, np.shape(value)[1:], str(np.asarray(value).dtype))
            for name, value in sorted(sample.items())
        )
        by_shape.setdefault(key, []).append(sample)
    groups = [same[i : i + batch] for same in by_shape.values() for i in range(0, len(same), batch)]
    try:
        return [
            {name: np.concatenate([s[name] for s in group]) for name in group[0]}
            for group in groups
        ]
    except ValueError as exc:
        raise ValueError(f"cannot batch these samples along axis 0 ({exc}); use batch=1") from None


def batch_first(model: ir.Model) -> bool:
    """Whether samples can be stacked along axis 0: every input's first dimension is symbolic (the
    evaluator stacks only samples of the same shape)."""
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    return not any(
        v.shape is None or len(v.shape) == 0 or isinstance(v.shape[0], int) for v in inputs
    )
