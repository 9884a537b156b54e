"""Fit spec numbers to measured kernel times (numpy/scipy only; the measuring is in ``profiling``).

The fitted model is the cost model's own roofline, so what ``mpqc-hw profile`` writes is exactly what
``CostModel`` will evaluate:

    t = run + qdq + overhead + max(MACs / throughput[precision], bytes / bandwidth[level])

``run`` (the session call itself) is measured directly with a trivial model; ``qdq`` is the
QuantizeLinear/DequantizeLinear time the cost model charges a quantized layer, from a line fit of
standalone Q/DQ kernels.  The remaining unknowns — the per-op overhead, one throughput per precision, one
bandwidth per memory level that some kernel's working set lands in — are fitted by nonlinear least squares
on log time (relative error, so a 20 us kernel counts as much as a 20 ms one), in log-parameter space,
started from the base spec's values, bounded to within 100x of them and weakly pulled toward them
(``PRIOR_WEIGHT``), so that a parameter the measurements barely touch (the L1 bandwidth, say, when every
L1-sized kernel is dominated by call overhead) stays near its prior instead of running off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, nnls


PRIOR_WEIGHT = 0.05
"""Weight of the pull toward the base spec, per log-parameter: a factor e off the prior costs as much as a
5% misfit of one kernel, so parameters the data determine move freely and the others stay put."""


@dataclass(frozen=True)
class Sample:
    """One measured kernel, reduced to what the fit needs."""

    seconds: float
    macs: int
    moved_bytes: int
    precision: str
    level: str
    fixed_seconds: float
    """Time known before the fit: session call + the Q/DQ overhead the cost model charges."""


@dataclass(frozen=True)
class Fit:
    overhead: float
    throughput: dict[str, float]
    bandwidth: dict[str, float]
    rms_log_error: float


def fit_line(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """Non-negative (fixed, per_element) with ``seconds ≈ fixed + per_element · size``, relative errors."""
    sizes_arr, t = np.asarray(sizes, float), np.asarray(seconds, float)
    design = np.column_stack([np.ones_like(sizes_arr), sizes_arr]) / t[:, None]
    coef, _ = nnls(design, np.ones_like(t))
    return float(coef[0]), float(coef[1])


def fit_roofline(
    samples: list[Sample],
    prior_overhead: float,
    prior_throughput: dict[str, float],
    prior_bandwidth: dict[str, float],
) -> Fit:
    """Least-squares fit of overhead, per-precision throughput and per-level bandwidth (see module doc)."""
    precisions = sorted({s.precision for s in samples})
    levels = sorted({s.level for s in samples})
    names = ["overhead"] + [f"T:{p}" for p in precisions] + [f"B:{l}" for l in levels]
    prior = np.array(
        [max(prior_overhead, 1e-7)]
        + [prior_throughput[p] for p in precisions]
        + [prior_bandwidth[l] for l in levels]
    )
    macs = np.array([s.macs for s in samples], float)
    moved = np.array([s.moved_bytes for s in samples], float)
    fixed = np.array([s.fixed_seconds for s in samples], float)
    measured = np.array([s.seconds for s in samples], float)
    p_index = np.array([1 + precisions.index(s.precision) for s in samples])
    l_index = np.array([1 + len(precisions) + levels.index(s.level) for s in samples])

    def predict(log_params: np.ndarray) -> np.ndarray:
        params = np.exp(log_params)
        return fixed + params[0] + np.maximum(macs / params[p_index], moved / params[l_index])

    def residuals(log_params: np.ndarray) -> np.ndarray:
        data = np.log(predict(log_params)) - np.log(measured)
        return np.concatenate([data, PRIOR_WEIGHT * (log_params - start)])

    start = np.log(prior)
    result = least_squares(residuals, start, bounds=(start - np.log(100.0), start + np.log(100.0)), method="trf")
    params = np.exp(result.x)
    values = dict(zip(names, params))
    return Fit(
        overhead=float(values["overhead"]),
        throughput={p: float(values[f"T:{p}"]) for p in precisions},
        bandwidth={l: float(values[f"B:{l}"]) for l in levels},
        rms_log_error=float(np.sqrt(np.mean(residuals(result.x)[: len(samples)] ** 2))),
    )
