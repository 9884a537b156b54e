"""``calibrate``: run the float model on calibration data and record every activation's range.

For each float activation of the main graph (graph inputs and node outputs; initializers and
Constant outputs are weights, not activations) the pass writes ``mpqc.calib.range``:
``{min, max, lo, hi, method, samples}``, where ``[min, max]`` is what the data produced and
``[lo, hi]`` the clip range the chosen method picks for an 8-bit (``bits``) activation quantizer.

How it observes the tensors. The model runs in onnxruntime's CPU provider on a *copy* (a
``ModelProto`` with every activation added as a graph output), so the caller's model only gains
annotations. Graph optimizations are limited to onnxruntime's basic, semantics-preserving level
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

Values that are NaN or infinite (masks written as ``-inf``) are not quantizable; ranges cover the
finite values and the pass leaves a note naming the tensor.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from mpqc.ir.annotations import ALL, CALIB_RANGE
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.data import DataError
from mpqc.passes.lib.runtime import session, session_options

__all__ = ["CalibratePass", "Method"]

Method = Literal["minmax", "percentile", "entropy", "mse"]

NO_DATA_NOTE = "no calibration data: activation ranges unknown, data-free analysis only"

_FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})
#: Protobuf cannot serialize a message over 2 GiB; bigger models go to onnxruntime through a file.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20


@register
class CalibratePass(Pass):
    name = "calibrate"
    writes = frozenset({CALIB_RANGE})
    preserves = frozenset({ALL})

    @dataclasses.dataclass(frozen=True)
    class Options:
        method: Method = option(
            "minmax",
            "how the clip range [lo, hi] is chosen: minmax, percentile, entropy (KL) or mse",
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

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        data = self.context.calibration
        if data is None:
            self.nothing_to_do(NO_DATA_NOTE)
            return ir.passes.PassResult(model, modified=False)
        data.check(model)
        if len(data) == 0:
            raise DataError(f"{data.source}: no calibration samples; give at least one")

        activations = _activations(model)
        session = _Session(model, activations)
        stats = {name: _Observed() for name in activations}
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
            lo, hi = self._clip(observed)
            CALIB_RANGE.set(
                activations[name],
                {
                    "min": observed.min,
                    "max": observed.max,
                    "lo": lo,
                    "hi": hi,
                    "method": self.options.method,
                    "samples": len(data),
                },
            )
        if not written:
            self.nothing_to_do("calibrate: the model computes no float activation to calibrate")
        return ir.passes.PassResult(model, modified=bool(written))

    def _clip(self, observed: _Observed) -> tuple[float, float]:
        """The method's clip range, within the observed extremes."""
        method = self.options.method
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
    """Name -> value of the float activations of the main graph, in graph order.

    Values whose type is unknown are included and kept only if onnxruntime returns floats for them.
    """
    graph = model.graph
    values = [v for v in graph.inputs if not v.is_initializer()]
    values += [out for node in graph if node.op_type != "Constant" for out in node.outputs]
    return {
        v.name: v
        for v in values
        if v.name and v.const_value is None and (v.dtype is None or v.dtype in _FLOAT_DTYPES)
    }


class _Session:
    """onnxruntime on a copy of the model whose outputs include every activation computed inside
    it."""

    def __init__(self, model: ir.Model, activations: Mapping[str, ir.Value]) -> None:
        self.inputs = [name for name, value in activations.items() if value.is_graph_input()]
        self.fetch = [name for name, value in activations.items() if not value.is_graph_input()]
        proto = ir.to_proto(model)
        present = {o.name for o in proto.graph.output}
        proto.graph.output.extend(
            onnx.ValueInfoProto(name=name) for name in self.fetch if name not in present
        )
        self.session = _inference_session(proto, _external_data_dir(model))

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
                + list(zip(self.fetch, outputs, strict=False))
            )


def _float_arrays(pairs: list[tuple[str, object]]) -> Iterator[tuple[str, np.ndarray]]:
    for name, array in pairs:
        if isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating) and array.size:
            yield name, array


def _external_data_dir(model: ir.Model) -> str | None:
    """The one folder holding the model's external tensors, or None if it has none."""
    folders = {
        str(value.const_value.base_dir)
        for graph in (model.graph, *model.graph.subgraphs())
        for value in graph.initializers.values()
        if isinstance(value.const_value, ir.ExternalTensor)
    }
    if len(folders) > 1:
        raise PassInputError(
            f"calibrate: the model's external tensors live in several folders "
            f"({', '.join(sorted(folders))}); save the model to one folder first"
        )
    return folders.pop() if folders else None


def _inference_session(proto: onnx.ModelProto, external_dir: str | None) -> ort.InferenceSession:
    options = session_options()
    if external_dir is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", external_dir
        )
    try:
        if proto.ByteSize() < _PROTOBUF_LIMIT:
            return session(proto.SerializeToString(), options=options)
        with tempfile.TemporaryDirectory(prefix="mpqc-calibrate-") as folder:
            path = os.path.join(folder, "model.onnx")
            onnx.save_model(proto, path, save_as_external_data=True, location="model.onnx.data")
            return session(path, options=options)
    except Exception as exc:  # onnxruntime raises its own unrelated types with long messages
        raise PassInputError(
            f"calibrate: onnxruntime cannot load the model ({_first_line(exc)})"
        ) from exc


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


# --- Choosing the clip range from a histogram ---------------------------------------------


def percentile_clip(hist: np.ndarray, edges: np.ndarray, percentile: float) -> tuple[float, float]:
    """[lo, hi] keeping ``percentile`` % of the mass: both tails if signed, the top only if not."""
    tail = 1.0 - percentile / 100.0
    hi = _quantile(hist, edges, 1.0 - tail)
    lo = edges[0] if edges[0] >= 0 else _quantile(hist, edges, tail)
    return float(lo), float(hi)


def _quantile(hist: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The q-quantile of the histogrammed values, interpolating linearly inside a bin."""
    cumulative = np.concatenate([[0], np.cumsum(hist)])
    target = q * cumulative[-1]
    upper = int(np.clip(np.searchsorted(cumulative, target, side="left"), 1, hist.size))
    inside = hist[upper - 1]
    fraction = (target - cumulative[upper - 1]) / inside if inside else 1.0
    return float(edges[upper - 1] + fraction * (edges[upper] - edges[upper - 1]))


def entropy_clip(
    hist: np.ndarray, edges: np.ndarray, low: float, high: float, levels: int
) -> tuple[float, float]:
    """[lo, hi] from the KL-optimal threshold on the histogram of |x| (``edges`` start at 0)."""
    one_sided = low >= 0
    threshold = float(edges[kl_threshold_bins(hist, 2 * levels if one_sided else levels)])
    hi = min(max(threshold, low), high)
    lo = low if one_sided else min(max(-threshold, low), high)
    return float(lo), float(hi)


def kl_threshold_bins(hist: np.ndarray, levels: int) -> int:
    """How many leading bins to keep so that ``levels`` quantization levels lose least information.

    For each candidate count ``i`` the reference P is ``hist[:i]`` with the clipped mass
    ``hist[i:]`` added to its last bin. Q quantizes ``hist[:i]`` into ``levels`` groups (group
    ``g`` holds bins ``ceil(g*i/levels)`` up to ``ceil((g+1)*i/levels)``) and spreads each group's
    mass evenly over the bins where P is non-zero. Because Q is constant inside a group, KL(P||Q)
    needs only per-group sums, read off prefix sums: all candidates are scored at once in
    O(candidates x levels) instead of O(candidates x bins). A bin where P has mass but Q none (the
    outlier bin of an otherwise empty group) gets a tiny floor, which rules that candidate out
    without producing infinities. Ties go to the smaller threshold.
    """
    counts = hist.astype(np.float64)
    total = counts.sum()
    mass_before = np.concatenate([[0.0], np.cumsum(counts)])  # mass_before[k] = counts[:k].sum()
    nonzero_before = np.concatenate([[0], np.cumsum(counts > 0)])
    plogp_before = np.concatenate([[0.0], np.cumsum(_xlogx(counts))])

    kept = np.arange(levels, counts.size + 1)  # candidate i: keep bins [0, i)
    clipped = total - mass_before[kept]
    last = counts[kept - 1] + clipped  # P's last bin
    plogp = plogp_before[kept - 1] + _xlogx(last)

    bounds = _group_bounds(counts.size, levels)
    group_mass = np.diff(mass_before[bounds], axis=1)
    group_nonzero = np.diff(nonzero_before[bounds], axis=1).astype(np.float64)
    group_nonzero[:, -1] += (counts[kept - 1] == 0) & (
        clipped > 0
    )  # the outlier bin becomes non-zero in P
    # Q per non-zero bin, normalized; a group without mass has no non-zero bin of hist, so
    # max(., 1) is safe.
    q_total = np.maximum(mass_before[kept], 1.0)[:, None]
    log_q = np.log(np.maximum(group_mass / np.maximum(group_nonzero, 1.0) / q_total, 1e-12))
    p_log_q = np.sum(group_mass * log_q, axis=1) + clipped * log_q[:, -1]
    kl = plogp / total - np.log(total) - p_log_q / total
    return int(kept[np.argmin(kl)])


@functools.lru_cache(maxsize=4)
def _group_bounds(bins: int, levels: int) -> np.ndarray:
    """For candidates i = levels..bins (rows), the first bin of each group, ceil(g * i / levels)
    (columns)."""
    kept = np.arange(levels, bins + 1)
    bounds = -((-np.arange(levels + 1)[None, :] * kept[:, None]) // levels)
    bounds.setflags(write=False)
    return bounds


def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def mse_clip(hist: np.ndarray, edges: np.ndarray, bits: int) -> tuple[float, float]:
    """[lo, hi] whose ``bits``-bit grid reproduces the histogrammed values with the least squared
    error.

    The grid is the one lowering builds: scale ``(max(hi,0) - min(lo,0)) / (2^bits - 1)`` and an
    integer zero point, so zero is exact and values beyond the grid saturate. Values are taken as
    spread evenly inside each bin, and the error of a bin is integrated exactly
    (``_error_integral``), so the estimate holds whether a bin spans many grid steps or a step spans
    many bins; neither the ``step^2 / 12`` noise model nor quantizing bin centres does both. The
    histogram is first merged to at most ``_MSE_BINS`` bins, which keeps that assumption sound and
    the search cheap.

    A side is searched only where the data extend away from zero (a non-negative tensor keeps
    lo = min). Starting from (min, max), the ends are optimized in turn until the error stops
    falling, first over every ``_MSE_COARSE``-th edge, then over every edge near the coarse answer.
    """
    merge = -(-hist.size // _MSE_BINS)
    hist = np.add.reduceat(hist, np.arange(0, hist.size, merge))
    edges = np.append(edges[::merge][: hist.size], edges[-1])
    filled = hist > 0
    counts = hist[filled].astype(np.float64)
    bounds = np.stack([edges[:-1][filled], edges[1:][filled]], axis=1).ravel()[
        None, :
    ]  # (start, stop) per filled bin
    top = 2**bits - 1

    def errors(lo_at: np.ndarray, hi_at: np.ndarray) -> np.ndarray:
        """Squared error summed over the histogram, for each pair of edges (lo_at[j], hi_at[j])."""
        low, high = np.minimum(edges[lo_at], 0.0)[:, None], np.maximum(edges[hi_at], 0.0)[:, None]
        step = (high - low) / top
        zero_point = np.round(-low / step)
        integral = _error_integral(bounds, step, -zero_point * step, (top - zero_point) * step)
        return (integral[:, 1::2] - integral[:, ::2]) @ counts

    index = np.arange(edges.size)
    lo_side = index[edges <= min(0.0, edges[-1])] if edges[0] < 0 else index[:1]
    hi_side = index[edges >= max(0.0, edges[0])] if edges[-1] > 0 else index[-1:]
    lo_at, hi_at = int(lo_side[0]), int(hi_side[-1])
    best = float(errors(np.array([lo_at]), np.array([hi_at]))[0])
    for stride, reach in ((_MSE_COARSE, edges.size), (1, _MSE_COARSE)):
        lo_choices = _near(lo_side, lo_at, reach, stride)
        hi_choices = _near(hi_side, hi_at, reach, stride)
        while True:
            hi_options = hi_choices[hi_choices > lo_at]
            hi_errors = errors(np.full(hi_options.size, lo_at), hi_options)
            new_hi = int(hi_options[np.argmin(hi_errors)])
            lo_options = lo_choices[lo_choices < new_hi]
            lo_errors = errors(lo_options, np.full(lo_options.size, new_hi))
            new_lo = int(lo_options[np.argmin(lo_errors)])
            if lo_errors.min() >= best:
                break
            lo_at, hi_at, best = new_lo, new_hi, float(lo_errors.min())
    return float(edges[lo_at]), float(edges[hi_at])


#: The MSE search merges histograms to at most this many bins (a bin is half an 8-bit step of the
#: full range).
_MSE_BINS = 512
#: The coarse MSE search tries every this-many-th edge; the fine one every edge within this
#: distance.
_MSE_COARSE = 8


def _near(side: np.ndarray, at: int, reach: int, stride: int) -> np.ndarray:
    """Edges of ``side`` within ``reach`` of ``at``, every ``stride``-th counted from ``at``, always
    with ``at``."""
    window = side[np.abs(side - at) <= reach]
    return window[(window - at) % stride == 0]


def _error_integral(
    x: np.ndarray, step: np.ndarray, grid_lo: np.ndarray, grid_hi: np.ndarray
) -> np.ndarray:
    """An antiderivative of the squared error of rounding to multiples of ``step`` in
    [grid_lo, grid_hi].

    Inside the grid the error is periodic: with ``u = x / step``, ``n = floor(u + 1/2)`` and
    ``t = u - n``, its integral is ``step^3 (n / 12 + t^3 / 3)``. Beyond either end the value
    saturates and the error grows as the squared distance to that end.
    """
    inside = np.clip(x, grid_lo, grid_hi)
    beyond = x - inside
    u = inside / step
    n = np.floor(u + 0.5)
    t = u - n
    return step * step * step * (n / 12 + t * t * t / 3) + beyond * beyond * beyond / 3
