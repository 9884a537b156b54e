"""Choosing an activation's clip range from its histogram: the percentile, entropy (KL) and MSE
methods of ``calibrate`` (the pass's docstring says what each does; METHODS.md where they come
from)."""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["entropy_clip", "kl_threshold_bins", "mse_clip", "percentile_clip"]


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
