"""Fit spec numbers to measured kernel times (numpy/scipy only; the measuring is in ``profiling``).

The fitted model is the cost model's own roofline, so what ``mpqc-hw profile`` writes is exactly
what ``CostModel`` will evaluate:

    t = run + qdq + overhead
        + max(MACs / throughput[kernel], bytes / bandwidth[level])
        + unpack[pair] · weights

``run`` (the session call itself) is measured directly with a trivial model; ``qdq`` is the
QuantizeLinear/DequantizeLinear time the cost model charges a quantized layer, from a line fit of
standalone Q/DQ kernels.  An emulated pair (int4 weights, 16-bit activations on onnxruntime's CPU
provider) runs a float kernel, but not the float graph's fastest one (onnxruntime leaves an unfused
DequantizeLinear -> Conv in plain NCHW instead of its NCHWc layout), so it gets its own throughput
plus a per-weight unpack time.  The remaining unknowns — the per-op overhead, one throughput per
measured pair, one unpack time per emulated pair, one bandwidth per memory level that some kernel's
working set lands in — are fitted by nonlinear least squares on log time (relative error, so a 20 us
kernel counts as much as a 20 ms one), in log-parameter space, started from the base spec's values,
bounded to within 100x of them and weakly pulled toward them (``PRIOR_WEIGHT``), so that a parameter
the measurements barely touch (the L1 bandwidth, say, when every L1-sized kernel is dominated by
call overhead) stays near its prior instead of running off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, nnls

PRIOR_WEIGHT = 0.05
"""Weight of the pull toward the base spec, per log-parameter: a factor e off the prior costs as
much as a 5% misfit of one kernel, so parameters the data determine move freely and the others stay
put."""


@dataclass(frozen=True)
class Sample:
    """One measured kernel, reduced to what the fit needs."""

    seconds: float
    macs: int
    moved_bytes: int
    weight_params: int
    kernel: str
    """The throughput this sample runs at (an emulated pair names the kernel it runs as)."""
    unpack: str | None
    """The emulated pair whose per-weight unpack time this sample pays, if any."""
    level: str
    fixed_seconds: float
    """Time known before the fit: session call + the Q/DQ overhead the cost model charges."""


@dataclass(frozen=True)
class Fit:
    overhead: float
    throughput: dict[str, float]
    unpack: dict[str, float]
    bandwidth: dict[str, float]
    rms_log_error: float


def fit_line(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """Non-negative (fixed, per_element) with ``seconds ≈ fixed + per_element · size``, fitted in
    relative error."""
    sizes_arr, t = np.asarray(sizes, float), np.asarray(seconds, float)
    design = np.column_stack([np.ones_like(sizes_arr), sizes_arr]) / t[:, None]
    coef, _ = nnls(design, np.ones_like(t))
    return float(coef[0]), float(coef[1])


def fit_roofline(
    samples: list[Sample],
    prior_overhead: float,
    prior_throughput: dict[str, float],
    prior_unpack: dict[str, float],
    prior_bandwidth: dict[str, float],
) -> Fit:
    """Least-squares fit of overhead, throughputs, unpack times and bandwidths (see module doc)."""
    kernels = sorted({s.kernel for s in samples})
    unpacks = sorted({s.unpack for s in samples if s.unpack is not None})
    levels = sorted({s.level for s in samples})
    names = (
        ["overhead"]
        + [f"T:{k}" for k in kernels]
        + [f"U:{u}" for u in unpacks]
        + [f"B:{level}" for level in levels]
    )
    prior = np.array(
        [max(prior_overhead, 1e-7)]
        + [prior_throughput[k] for k in kernels]
        + [max(prior_unpack[u], 1e-12) for u in unpacks]
        + [prior_bandwidth[level] for level in levels]
    )
    macs = np.array([s.macs for s in samples], float)
    moved = np.array([s.moved_bytes for s in samples], float)
    weights = np.array([s.weight_params if s.unpack is not None else 0 for s in samples], float)
    fixed = np.array([s.fixed_seconds for s in samples], float)
    measured = np.array([s.seconds for s in samples], float)
    t_index = np.array([names.index(f"T:{s.kernel}") for s in samples])
    u_index = np.array(
        [names.index(f"U:{s.unpack}") if s.unpack is not None else 0 for s in samples]
    )
    l_index = np.array([names.index(f"B:{s.level}") for s in samples])
    start = np.log(prior)

    def predict(log_params: np.ndarray) -> np.ndarray:
        params = np.exp(log_params)
        roofline = np.maximum(macs / params[t_index], moved / params[l_index])
        return fixed + params[0] + roofline + weights * params[u_index]

    def residuals(log_params: np.ndarray) -> np.ndarray:
        data = np.log(predict(log_params)) - np.log(measured)
        return np.concatenate([data, PRIOR_WEIGHT * (log_params - start)])

    result = least_squares(
        residuals, start, bounds=(start - np.log(100.0), start + np.log(100.0)), method="trf"
    )
    values = dict(zip(names, np.exp(result.x), strict=True))
    return Fit(
        overhead=float(values["overhead"]),
        throughput={k: float(values[f"T:{k}"]) for k in kernels},
        unpack={u: float(values[f"U:{u}"]) for u in unpacks},
        bandwidth={level: float(values[f"B:{level}"]) for level in levels},
        rms_log_error=float(np.sqrt(np.mean(residuals(result.x)[: len(samples)] ** 2))),
    )
