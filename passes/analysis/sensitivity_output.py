"""``sensitivity-output``: quantize one layer, run the model, measure how far its output moves.

For each layer and candidate, only that layer is quantized — its weight at b bits (``w{b}``), or its
activation input at b bits (``a{b}``), or with a range measured on every run (``adyn``, for the
MatMul/Gemm layers that have the form, on a spec that runs it) — and the model runs on calibration
samples; the score is the distance of the outputs from float's. Where a layer also has a dynamic
range, a pair that runs as an integer kernel (``plan.fusable``: w8a8) is scored as a pair too
(``w8a8``): its plan quantizes the layer's output as well, which neither part measures, and where a
clipped output range loses a residual stream's outliers that is most of the pair's damage; summed
from its parts, it would look better than the dynamic range, which keeps the output float. This is
ALPS without fine-tuning (METHODS.md §4) and AIMET AMP's phase 1 (§7): the direct, data-driven
estimate that the cheap proxies are judged against.

All candidates run through one ``Evaluator`` (``mpqc.passes.lib.evaluator``), so "layer l at b bits"
means exactly what ``lower-qdq`` emits and the float reference is computed once. Each layer's
candidates run on its suffix after one float run of the prefix per eight layers, and the layers
spread over ``context.executor`` — or, without one, over forked local processes when the work is
worth starting them (see the evaluator's docstring for what that measured).

``measure``: ``kl`` (KL divergence of the softmax of the first output: classifiers), ``mse``
(squared error relative to output energy, 1/SQNR: anything), ``flips`` (fraction of top-1 changes:
coarse with few samples), ``auto`` (``kl`` when the model's one output is ``[N, classes]``,
else ``mse``, which counts every output: KL of the first alone would score a layer that feeds only
another output as harmless at any bits). Activation candidates need calibrated ranges (run
``calibrate`` first); without them only weights are scored.
With ``prune`` (the default pipeline's, after ``cost``), only the scores that can change the
search's answer are measured (``passes/choose/choosable.py``): under budgets the all-8-bit model
meets, sub-8-bit candidates are not measured (those a cost model prices cheaper only once the
undominated pairs' scores leave the budgets unsettled), nor a part every choosable pair of a layer
shares; a note says what was left out, and the detail annotation lists each layer's ``choosable``
pairs and ``shared`` parts for the search.
When every model input has a symbolic first dimension, samples of the same shape run as one batch
(option ``batch``; no padding, so lines of one width or sentences of one length group together),
which is several times faster for small models and gives the same per-row measures.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from mpqc.core.bits import DYNAMIC_BITS, FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.passes.analysis.sensitivity_base import ActivationCandidates, SensitivityPass
from mpqc.passes.choose.choosable import Choices, choosable
from mpqc.passes.infra.base import PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.evaluator import Evaluator, Measure, batch_first
from mpqc.passes.lib.plan import fusable

__all__ = ["SensitivityOutputPass"]


@register
class SensitivityOutputPass(SensitivityPass):
    name = "sensitivity-output"
    metric = "output"
    may_read = frozenset({annotations.CALIB_RANGE, annotations.COST, annotations.MODEL_COST})

    @dataclasses.dataclass(frozen=True)
    class Options(ActivationCandidates):
        measure: Literal["auto", "kl", "mse", "flips"] = option(
            "auto", "output distance: kl, mse (1/SQNR), flips (top-1 changes) or auto"
        )
        samples: int = option(32, "calibration samples to run per candidate")
        batch: bool = option(
            True,
            "run the samples as one batch when every model input's first dimension is symbolic",
        )

        prune: bool = option(
            False,
            "measure only what can change the search's choice under the budgets (run cost first)",
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.samples < 1:
                raise ValueError(f"samples must be at least 1, got {self.samples}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = self.layers(model)
        data = self.calibration(
            model,
            "to run the model; without data use sensitivity-entropy or sensitivity-weight-error",
        )
        wbits, abits = self.weight_bits(), self.activation_bits()
        scored_acts = [
            layer
            for layer in layers
            if layer.activation is not None and annotations.CALIB_RANGE.has(layer.activation)
        ]
        if len(scored_acts) < sum(layer.activation is not None for layer in layers):
            self.context.note(
                f"{self.name}: activations without a calibrated range are not scored "
                "(run calibrate first)"
            )
        scorable = {layer.name: [f"w{b}" for b in wbits] for layer in layers}
        for layer in scored_acts:
            scorable[layer.name] += [f"a{b}" for b in abits]
        dynamic = Bits(FLOAT_BITS, DYNAMIC_BITS, dynamic=True)
        fused = [str(Bits(w, a)) for w in wbits for a in abits if fusable(w, a)]
        for layer in self.dynamic_layers(layers):
            scorable[layer.name].append("adyn")
            if layer in scored_acts:
                scorable[layer.name] += fused
        choices = self._choosable(model, layers, scorable) if self.options.prune else None
        # Where the undominated pairs may settle the choice alone, they are measured first.
        settle = choices is not None and choices.may_settle()
        plan = None if choices is None else choices.undominated if settle else choices.kept
        wanted = {
            layer.name: [
                key
                for key in scorable[layer.name]
                if plan is None or key in plan[layer.name].measured
            ]
            for layer in layers
        }
        measurable = [key for keys in wanted.values() for key in keys]
        if settle:  # the kept pairs' grids, should they be measured after all
            measurable += [key for c in choices.kept.values() for key in c.measured]
        grids = {_choice(key, dynamic)[0] for key in measurable} - {FLOAT_BITS}
        scores: dict[str, dict[str, float]] = {layer.name: {} for layer in layers}
        detail: dict[str, Any] = {}
        if any(wanted.values()):
            samples = list(data)[: self.options.samples]
            batch = len(samples) if self.options.batch and batch_first(model) else 1
            evaluator = Evaluator(
                model,
                samples,
                wbits=sorted(grids),  # the grids measured (each costs a copy of the weights)
                executor=self.context.executor,
                batch=batch,
                spec=self.context.hw,
            )
            measure = self._measure(evaluator)
            self._score(evaluator, measure, wanted, scores)
            if settle and not choices.settled(scores):
                plan = choices.kept
                more = {
                    name: [
                        key for key in scorable[name] if key in kept.measured - set(scores[name])
                    ]
                    for name, kept in plan.items()
                }
                if any(more.values()):
                    self._score(evaluator, measure, more, scores)
            detail = {"measure": measure, "samples": len(samples)}
        for layer in layers:
            own = dict(detail)
            if plan is not None:
                own["choosable"] = [str(pair) for pair in plan[layer.name].pairs]
                own["shared"] = sorted(plan[layer.name].shared)
            self.write(layer, scores[layer.name], own)
        if plan is not None:
            self._note_skipped(scorable, scores)
        return ir.passes.PassResult(model, modified=True)

    def _score(
        self,
        evaluator: Evaluator,
        measure: Measure,
        wanted: dict[str, list[str]],
        scores: dict[str, dict[str, float]],
    ) -> None:
        """Measure each layer's ``wanted`` score keys into ``scores``."""
        dynamic = Bits(FLOAT_BITS, DYNAMIC_BITS, dynamic=True)
        jobs = [(name, key) for name, keys in wanted.items() for key in keys]
        steps = self.count_evaluations(len(jobs))
        configs = [{name: _choice(key, dynamic)} for name, key in jobs]
        for (name, key), error in zip(
            jobs, evaluator.errors(configs, measure, steps.advance), strict=True
        ):
            scores[name][key] = error

    def _choosable(
        self, model: ir.Model, layers: list, scorable: dict[str, list[str]]
    ) -> Choices | None:
        return choosable(
            layers,
            scorable,
            self.context.constraints,
            annotations.MODEL_COST.get(model) or {},
        )

    def _note_skipped(
        self, scorable: dict[str, list[str]], scores: dict[str, dict[str, float]]
    ) -> None:
        """One line in the report: which scores were not measured, and why."""
        skipped = collections.Counter(
            key for name, keys in scorable.items() for key in keys if key not in scores[name]
        )
        if not skipped:
            return
        by_count: dict[int, list[str]] = {}
        for key, count in sorted(skipped.items()):
            by_count.setdefault(count, []).append(key)
        what = "; ".join(f"{', '.join(keys)} on {n} layers" for n, keys in sorted(by_count.items()))
        budget = "these budgets" if self.context.constraints else "no budget"
        self.context.note(
            f"{self.name}: not measured, as they cannot change the search's choice under {budget} "
            f"(damage taken to fall as bits rise): {what}"
        )

    def _measure(self, evaluator: Evaluator) -> Measure:
        firsts = [np.asarray(outputs[0]) for outputs in evaluator.reference]
        # KL and flips need one class axis: the first output's last axis, the same width for every
        # sample (a width that follows the input, like a sequence length, is not a class axis).
        widths = {first.shape[-1] if first.ndim else 1 for first in firsts}
        if self.options.measure == "auto":
            one_output = all(len(outputs) == 1 for outputs in evaluator.reference)
            classes = len(widths) == 1 and all(f.ndim == 2 for f in firsts) and widths.pop() > 1
            return "kl" if one_output and classes else "mse"
        if self.options.measure in ("kl", "flips") and len(widths) > 1:
            raise PassInputError(
                f"{self.name}: measure={self.options.measure} compares the first output's "
                "last axis as classes, but its width varies "
                f"with the input ({', '.join(map(str, sorted(widths)))}); use measure=mse"
            )
        return self.options.measure


def _choice(key: str, dynamic: Bits) -> tuple:
    """The one-layer choice a score key measures: ``w4`` -> (4, float), ``a8`` -> (float, 8),
    ``w8a8`` -> (8, 8)."""
    if key == "adyn":
        return dynamic
    if "a" in key[1:]:
        return Bits.parse(key)
    bits = int(key[1:])
    return (bits, FLOAT_BITS) if key[0] == "w" else (FLOAT_BITS, bits)
