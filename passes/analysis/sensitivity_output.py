"""``sensitivity-output``: quantize one layer, run the model, measure how far its output moves.

For each layer and candidate, only that layer is quantized — its weight at b bits (``w{b}``), or its
activation input at b bits (``a{b}``), or with a range measured on every run (``adyn``, for the
MatMul/Gemm layers that have the form, on a spec that runs it) — and the model runs on calibration
samples; the score is the distance of the outputs from float's. This is ALPS without fine-tuning
(METHODS.md §4) and AIMET AMP's phase 1 (§7): the direct, data-driven estimate that the cheap
proxies are judged against.

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
When every model input has a symbolic first dimension, samples of the same shape run as one batch
(option ``batch``; no padding, so lines of one width or sentences of one length group together),
which is several times faster for small models and gives the same per-row measures.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from mpqc.core.bits import DYNAMIC_BITS, FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.passes.analysis.sensitivity_base import ActivationCandidates, SensitivityPass
from mpqc.passes.infra.base import PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.evaluator import Config, Evaluator, Measure, batch_first

__all__ = ["SensitivityOutputPass"]


@register
class SensitivityOutputPass(SensitivityPass):
    name = "sensitivity-output"
    metric = "output"
    may_read = frozenset({annotations.CALIB_RANGE})

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
        samples = list(data)[: self.options.samples]
        batch = len(samples) if self.options.batch and batch_first(model) else 1
        evaluator = Evaluator(
            model,
            samples,
            wbits=wbits,
            executor=self.context.executor,
            batch=batch,
            spec=self.context.hw,
        )

        jobs: list[tuple[str, str, Config]] = []
        for layer in layers:
            jobs += [(layer.name, f"w{b}", {layer.name: (b, FLOAT_BITS)}) for b in wbits]
        for layer in scored_acts:
            jobs += [(layer.name, f"a{b}", {layer.name: (FLOAT_BITS, b)}) for b in abits]
        dynamic = Bits(FLOAT_BITS, DYNAMIC_BITS, dynamic=True)
        jobs += [
            (layer.name, "adyn", {layer.name: dynamic}) for layer in self.dynamic_layers(layers)
        ]
        measure = self._measure(evaluator)
        steps = self.count_evaluations(len(jobs))
        errors = evaluator.errors([config for _, _, config in jobs], measure, steps.advance)

        scores: dict[str, dict[str, float]] = {layer.name: {} for layer in layers}
        for (name, candidate, _), error in zip(jobs, errors, strict=True):
            scores[name][candidate] = error
        for layer in layers:
            self.write(layer, scores[layer.name], {"measure": measure, "samples": len(samples)})
        return ir.passes.PassResult(model, modified=True)

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
