"""``calibrate``: run the float model on calibration data and record every activation's range.

For each float activation (graph inputs and node outputs, those inside If/Loop/Scan bodies too;
initializers and Constant outputs are weights, not activations) the pass writes
``mpqc.calib.range``:
``{min, max, lo, hi, method, samples}``, where ``[min, max]`` is what the data produced and
``[lo, hi]`` the clip range the chosen method picks for an 8-bit (``bits``) activation quantizer.

How it observes the tensors. The model runs in onnxruntime's CPU provider on a *copy* (a
``ModelProto`` with every activation added as a graph output), so the caller's model only gains
annotations. Body tensors are carried out of their bodies for that (``passes/lib/bodies.py``): a
Loop's or Scan's range covers every iteration, and a value of an If branch that never runs on the
calibration data gets no range (its layers then quantize their weights only, and lower-qdq says
why). Graph optimizations are limited to onnxruntime's basic, semantics-preserving level
and a tensor that is a graph output is never fused away, so the numbers are the model's own
tensors. One thread and deterministic compute make two runs give the same bytes.

How it summarizes them. Statistics are per tensor and independent of its shape, so samples of
different sizes (variable-width text lines, which crash onnxruntime's own Percentile and Entropy
calibrators) simply add up. Samples are run one at a time and only summaries are kept: memory is
O(tensors x bins), whatever the number of samples. Histogram methods make two passes over the
data: the first finds each tensor's exact extremes, the second fills a histogram with that fixed
range. Re-binning a growing histogram in one pass would blur the tails that percentile and
entropy are about, and the result would depend on sample order.

The methods (see METHODS.md):

- ``minmax``: the observed extremes.
- ``percentile``: the ``percentile``-th quantile of the pooled values; signed tensors lose the
  same fraction at both tails, non-negative ones only at the top.
- ``entropy``: the TensorRT / onnxruntime KL-divergence search. A histogram of ``|x|`` is cut at
  each candidate threshold (outliers folded into the last bin), re-quantized to
  ``num_quantized_bins`` levels and compared with the original; the threshold with the smallest
  KL divergence wins. Non-negative tensors are clipped on one side only and, because an unsigned
  grid spends all its levels on ``[0, t]``, are compared at twice as many levels.
- ``mse``: the clip whose ``bits``-bit grid (asymmetric, zero exact, as lowering builds it)
  reproduces the histogrammed values with the least squared error, integrated exactly over each
  bin; the two ends are optimized in turn, coarse to fine, until the error stops falling.
- ``best``: one of minmax, percentile and mse for the whole model, whichever gives the model at
  w8a8 the least output error on the calibration samples (``range_choice.py``: three whole-model
  evaluator runs); the report gives each one's error.
- ``auto``: per tensor, whichever of minmax, percentile and mse damages the model's output least,
  measured with the evaluator where their ranges differ materially (``range_choice.py``); the
  report lists every tensor compared, the output error of each candidate and the one kept.

Values that are NaN or infinite (masks written as ``-inf``) are not quantizable; ranges cover the
finite values and the pass leaves a note naming the tensor.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from mpqc.ir.annotations import ALL, CALIB_RANGE, REPORT
from mpqc.passes.analysis.clip_range import entropy_clip, mse_clip, percentile_clip
from mpqc.passes.analysis.range_choice import (
    CANDIDATES,
    accept_jointly,
    choose_estimator,
    choose_ranges,
    material_candidates,
)
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.bodies import expose
from mpqc.passes.lib.data import DataError
from mpqc.passes.lib.evaluator import Evaluator, batch_first
from mpqc.passes.lib.runtime import external_folder, model_session

__all__ = ["CalibratePass", "Method"]

Method = Literal["minmax", "percentile", "entropy", "mse", "best", "auto"]

NO_DATA_NOTE = "no calibration data: activation ranges unknown, data-free analysis only"

_FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})


@register
class CalibratePass(Pass):
    name = "calibrate"
    writes = frozenset({CALIB_RANGE, REPORT})
    preserves = frozenset({ALL})

    @dataclasses.dataclass(frozen=True)
    class Options:
        method: Method = option(
            "minmax",
            "how the clip range [lo, hi] is chosen: minmax, percentile, entropy (KL), mse, best "
            "(whichever of minmax, percentile and mse damages the whole model's output least) or "
            "auto (per tensor, whichever of them damages the output least)",
        )
        percentile: float = option(
            99.999, "percentile method: the quantile kept, in percent (50 < p <= 100)"
        )
        bins: int = option(2048, "histogram bins per tensor for percentile, entropy and mse")
        num_quantized_bins: int = option(
            128, "entropy method: quantization levels per sign (128 for 8 bits)"
        )
        bits: int = option(
            8, "mse method: the activation bit-width whose quantization error is minimized"
        )
        samples: int = option(
            32, "best and auto methods: calibration samples each candidate range runs on"
        )

        def __post_init__(self) -> None:
            if not 50.0 < self.percentile <= 100.0:
                raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
            if self.num_quantized_bins < 2:
                raise ValueError(
                    f"num_quantized_bins must be at least 2, got {self.num_quantized_bins}"
                )
            if self.bins < 2 * self.num_quantized_bins:
                raise ValueError(
                    f"bins ({self.bins}) must be at least twice "
                    f"num_quantized_bins ({self.num_quantized_bins})"
                )
            if not 2 <= self.bits <= 16:
                raise ValueError(f"bits must be between 2 and 16, got {self.bits}")
            if self.samples < 1:
                raise ValueError(f"samples must be at least 1, got {self.samples}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        data = self.context.calibration
        if data is None:
            self.nothing_to_do(NO_DATA_NOTE)
            return ir.passes.PassResult(model, modified=False)
        data.check(model)
        if len(data) == 0:
            raise DataError(f"{data.source}: no calibration samples; give at least one")

        activations = _activations(model)
        try:
            stats = self._observe(_Session(model, activations), activations)
        except (PassInputError, DataError) as exc:
            if all(_in_main_graph(value, model) for value in activations.values()):
                raise
            # Retried on the main graph alone: if that fails too, its error is the user's problem.
            activations = {k: v for k, v in activations.items() if _in_main_graph(v, model)}
            stats = self._observe(_Session(model, activations), activations)
            self.context.note(
                f"calibrate: the tensors inside If/Loop/Scan bodies cannot be observed ({exc}); "
                "layers there get no activation range and quantize weights only"
            )
        candidates: dict[str, dict[str, tuple[float, float]]] = {}
        written = 0
        for name, observed in stats.items():
            if observed.nonfinite:
                self.context.note(
                    f"calibrate: tensor '{name}' has NaN or Inf values; "
                    "its range covers the finite values only"
                )
            if observed.count == 0:
                continue
            written += 1
            measured = self.options.method in ("best", "auto")
            if measured:
                candidates[name] = material_candidates(
                    {method: self._clip(observed, method) for method in CANDIDATES}
                )
            method = "minmax" if measured else self.options.method
            self._write(activations[name], observed, self._clip(observed, method), method)
        if not written:
            self.nothing_to_do("calibrate: the model computes no float activation to calibrate")
        section: dict[str, object] = {"method": self.options.method, "activations": written}
        compared = {name: ranges for name, ranges in candidates.items() if len(ranges) > 1}
        if compared and self.options.method == "best":
            section["model_error"] = self._best(model, activations, stats, compared)
        elif compared:
            section["compared"], section["joint_error"] = self._choose(
                model, activations, stats, compared
            )
        self.report(model, section)
        return ir.passes.PassResult(model, modified=bool(written))

    def _write(
        self, value: ir.Value, observed: _Observed, clip: tuple[float, float], method: str
    ) -> None:
        assert self.context.calibration is not None
        CALIB_RANGE.set(
            value,
            {
                "min": observed.min,
                "max": observed.max,
                "lo": clip[0],
                "hi": clip[1],
                "method": method,
                "samples": len(self.context.calibration),
            },
        )

    def _evaluator(self, model: ir.Model) -> Evaluator:
        """The evaluator the measured methods judge ranges with: w8 weights, every tensor on its
        minmax range."""
        data = self.context.calibration
        assert data is not None
        samples = list(data)[: self.options.samples]
        return Evaluator(
            model,
            samples,
            wbits=(8,),
            executor=self.context.executor,
            batch=len(samples) if batch_first(model) else 1,
            spec=self.context.hw,
        )

    def _best(
        self,
        model: ir.Model,
        activations: Mapping[str, ir.Value],
        stats: Mapping[str, _Observed],
        compared: Mapping[str, Mapping[str, tuple[float, float]]],
    ) -> dict[str, float]:
        """``method=best``: every tensor is written at its minmax range; if another estimator's
        ranges give the whole model at w8a8 less output error, its material ones replace them.
        Returns each estimator's error."""
        method, errors = choose_estimator(self._evaluator(model), compared)
        clipped = [name for name, ranges in compared.items() if method in ranges]
        if method != "minmax":
            for name in clipped:
                self._write(activations[name], stats[name], compared[name][method], method)
        self.context.note(
            f"calibrate: method=best kept {method} ranges"
            + (f" for {len(clipped)} activations" if method != "minmax" else "")
            + ": the whole model's output error at w8a8 is "
            + ", ".join(f"{errors[m]:.3g} with {m}" for m in CANDIDATES)
        )
        return errors

    def _choose(
        self,
        model: ir.Model,
        activations: Mapping[str, ir.Value],
        stats: Mapping[str, _Observed],
        compared: Mapping[str, Mapping[str, tuple[float, float]]],
    ) -> tuple[dict[str, dict[str, object]], dict[str, float]]:
        """``method=auto``: every tensor is written at its minmax range; where other estimators'
        ranges differ materially, the one that damages the output least replaces it, as far as
        the whole model's error confirms it (``range_choice.py``). Returns the report's entry per
        tensor compared (the method kept, each candidate's output error, a clip the whole model
        rejected) and the whole model's error per number of clips accepted."""
        evaluator = self._evaluator(model)
        alone = choose_ranges(evaluator, compared)
        choices, joint = accept_jointly(evaluator, alone, compared)
        for name, choice in choices.items():
            if choice.method != "minmax":
                clip = compared[name][choice.method]
                self._write(activations[name], stats[name], clip, choice.method)
        kept = Counter(choice.method for choice in choices.values())
        offered = sum(choice.method != "minmax" for choice in alone.values())
        self.context.note(
            f"calibrate: method=auto compared {len(choices)} activations whose ranges differ; "
            f"{joint.kept} of the {offered} clipped ranges that helped alone also lowered the "
            "whole model's error at w8a8; kept "
            + ", ".join(f"{method} for {kept[method]}" for method in CANDIDATES if kept[method])
        )
        entries: dict[str, dict[str, object]] = {
            name: {"method": choice.method, "output_error": dict(choice.damage)}
            for name, choice in choices.items()
        }
        for name, choice in alone.items():
            if choice.method != choices[name].method:
                entries[name]["rejected_jointly"] = choice.method
        return entries, {str(k): v for k, v in sorted(joint.errors.items())}

    def _observe(self, session: _Session, names: Iterable[str]) -> dict[str, _Observed]:
        """Every activation's statistics over the calibration samples (two passes for histogram
        methods)."""
        data = self.context.calibration
        assert data is not None
        stats = {name: _Observed() for name in names}
        runs = 1 if self.options.method == "minmax" else 2
        steps = self.context.steps("samples", runs * len(data))
        for tensors in session.run_all(data):
            for name, array in tensors:
                stats[name].update_range(array)
            steps.advance()
        if self.options.method != "minmax":
            for observed in stats.values():
                observed.start_histogram(
                    self.options.bins, absolute=self.options.method == "entropy"
                )
            for tensors in session.run_all(data):
                for name, array in tensors:
                    stats[name].update_histogram(array)
                steps.advance()
        return stats

    def _clip(self, observed: _Observed, method: str) -> tuple[float, float]:
        """``method``'s clip range, within the observed extremes."""
        if method == "minmax" or observed.min == observed.max:
            return observed.min, observed.max
        assert observed.hist is not None and observed.edges is not None
        if method == "percentile":
            return percentile_clip(observed.hist, observed.edges, self.options.percentile)
        if method == "entropy":
            return entropy_clip(
                observed.hist,
                observed.edges,
                observed.min,
                observed.max,
                self.options.num_quantized_bins,
            )
        return mse_clip(observed.hist, observed.edges, self.options.bits)


# --- Observing the model's tensors ---------------------------------------------------------


def _activations(model: ir.Model) -> dict[str, ir.Value]:
    """Name -> value of the float activations, in graph order: the main graph's, then those of
    If/Loop/Scan bodies (their node outputs and a Loop's or Scan's per-iteration inputs), which need
    a known type to be carried out of their body (``passes/lib/bodies.py``).

    Values of the main graph whose type is unknown are included and kept only if onnxruntime returns
    floats for them.
    """
    graph = model.graph
    values = [v for v in graph.inputs if not v.is_initializer()]
    values += [out for node in graph if node.op_type != "Constant" for out in node.outputs]
    found = {
        v.name: v
        for v in values
        if v.name and v.const_value is None and (v.dtype is None or v.dtype in _FLOAT_DTYPES)
    }
    for body in graph.subgraphs():
        inner = [
            *body.inputs,
            *(o for node in body if node.op_type != "Constant" for o in node.outputs),
        ]
        found.update(
            (v.name, v)
            for v in inner
            if v.name and v.const_value is None and v.dtype in _FLOAT_DTYPES
        )
    return found


def _in_main_graph(value: ir.Value, model: ir.Model) -> bool:
    producer = value.producer()
    return (producer.graph if producer is not None else value.graph) is model.graph


class _Session:
    """onnxruntime on a copy of the model whose outputs include every activation computed inside
    it, those inside bodies carried out to the main graph (``passes/lib/bodies.expose``)."""

    def __init__(self, model: ir.Model, activations: Mapping[str, ir.Value]) -> None:
        main = {name: _in_main_graph(value, model) for name, value in activations.items()}
        self.inputs = [
            name for name, value in activations.items() if main[name] and value.is_graph_input()
        ]
        self.fetch = [
            name for name, value in activations.items() if main[name] and not value.is_graph_input()
        ]
        inner = {
            name: value.dtype.value
            for name, value in activations.items()
            if not main[name] and value.dtype is not None
        }
        exposed = expose(ir.to_proto(model), inner)
        proto = exposed.proto
        present = {o.name for o in proto.graph.output}
        proto.graph.output.extend(
            onnx.ValueInfoProto(name=name) for name in self.fetch if name not in present
        )
        #: Fetched output -> the body value it carries.
        self.carried = {out: value for out, (value, _) in exposed.outputs.items()}
        self.fetch += list(exposed.outputs)
        folder = external_folder(model)
        try:
            self.session = model_session(proto, folder)
        except Exception as exc:  # onnxruntime raises its own unrelated types with long messages
            raise PassInputError(
                f"calibrate: onnxruntime cannot load the model ({_first_line(exc)})"
            ) from exc

    def run_all(
        self, samples: Iterable[Mapping[str, np.ndarray]]
    ) -> Iterator[Iterator[tuple[str, np.ndarray]]]:
        """Per sample, in order: (name, float array) for the float graph inputs and the fetched
        tensors."""
        for index, sample in enumerate(samples):
            feeds = {name: np.asarray(array) for name, array in sample.items()}
            try:
                outputs = self.session.run(self.fetch, feeds)
            except Exception as exc:  # onnxruntime's own error types, with long messages
                raise DataError(
                    f"calibration sample {index}: onnxruntime cannot run the model on it "
                    f"({_first_line(exc)})"
                ) from exc
            # Not strict: with nothing to fetch, onnxruntime returns every graph output instead.
            yield _float_arrays(
                [(name, feeds[name]) for name in self.inputs]
                + [
                    (self.carried.get(name, name), array)
                    for name, array in zip(self.fetch, outputs, strict=False)
                ]
            )


def _float_arrays(pairs: list[tuple[str, object]]) -> Iterator[tuple[str, np.ndarray]]:
    for name, array in pairs:
        if isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating) and array.size:
            yield name, array


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclasses.dataclass
class _Observed:
    """Shape-free running statistics of one tensor: extremes, then a fixed-range histogram."""

    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    nonfinite: bool = False
    absolute: bool = False
    hist: np.ndarray | None = None
    edges: np.ndarray | None = None

    def update_range(self, array: np.ndarray) -> None:
        array = self._finite(array)
        if array.size:
            self.min = min(self.min, float(array.min()))
            self.max = max(self.max, float(array.max()))
            self.count += array.size

    def start_histogram(self, bins: int, absolute: bool) -> None:
        """Fix the bins: over [min, max], or over [0, max |x|] for a histogram of magnitudes."""
        if self.count == 0 or self.min == self.max:
            return
        self.absolute = absolute
        lo, hi = (0.0, max(-self.min, self.max)) if absolute else (self.min, self.max)
        self.edges = np.linspace(lo, hi, bins + 1)
        self.hist = np.zeros(bins, dtype=np.int64)

    def update_histogram(self, array: np.ndarray) -> None:
        if self.hist is None or self.edges is None:
            return
        values = self._finite(array).astype(np.float64).ravel()
        if self.absolute:
            values = np.abs(values)
        bins = self.hist.size
        lo, hi = self.edges[0], self.edges[-1]
        index = ((values - lo) * (bins / (hi - lo))).astype(np.int64)
        np.clip(index, 0, bins - 1, out=index)
        self.hist += np.bincount(index, minlength=bins)

    def _finite(self, array: np.ndarray) -> np.ndarray:
        # min and max propagate NaN and reach +-Inf, so two reductions tell whether a mask is
        # needed.
        if np.isfinite(array.min()) and np.isfinite(array.max()):
            return array
        self.nonfinite = True
        return array[np.isfinite(array)]
