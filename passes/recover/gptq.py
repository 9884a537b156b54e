"""GPTQ: round a weight matrix to its grid so that the layer's *output* moves least, not its
weights.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"
(ICLR 2023), in numpy. For a layer ``y = W x`` and inputs ``X`` seen on calibration data, the output
error of a rounded ``Q`` is ``tr((W − Q) H (W − Q)ᵀ)`` with ``H = Σ x xᵀ``. GPTQ rounds one input
column at a time and pushes that column's rounding error onto the columns not yet rounded, along
``H⁻¹`` (Optimal Brain Surgeon's update), using the upper Cholesky factor of ``H⁻¹`` so the update
is one row of a triangular matrix. Columns go in order of decreasing ``diag(H)`` ("act-order": the
inputs with most energy are rounded while the most columns are left to absorb their error); with a
per-output-channel scale this reordering costs nothing at lowering time.

Everything is batched over groups (grouped and depthwise convolutions have one Hessian per group),
and the rows of a group are updated together, so the Python loop runs once per input column.

Scales are given per element, so a per-channel grid and a per-block one (MatMul/Gemm weights with
blocks along K, MatMulNBits) are the same loop: the scales are fixed before rounding ("static
groups"), which is what keeps act-order free.

One constraint is mpqc's own (the exactness contract of ``recover``): every channel (every block)
must keep an element at ``±qmax`` so that the scale ``lower-qdq`` recomputes from the written weight
is the scale GPTQ rounded with. Its largest-magnitude element is *pinned* to ``±qmax``
(``peak_pins``); the error this forces is fed forward like any other rounding error.

Optionally the per-channel scale is searched first (``clip_scales``): a clip ratio below 1 trades
saturating a few large weights for finer steps everywhere else, scored by the Hessian-diagonal
weighted error ``Σ_j H_jj (w_j − q_j)²``, the output error of rounding each weight alone.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clip_scales", "gptq_levels", "output_error", "peak_pins", "round_levels"]


def round_levels(weight: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    """Plain rounding to the grid: ``clip(rint(w / s), ±qmax)``; ``weight`` and ``scales`` are
    (groups, rows, cols)."""
    return np.clip(np.rint(weight / scales), -qmax, qmax)


def peak_pins(weight: np.ndarray, block: int) -> np.ndarray:
    """Per row and block of ``block`` consecutive columns, a mask of its largest-magnitude element
    (none in all-zero blocks)."""
    groups, rows, cols = weight.shape
    blocks = -(-cols // block)
    padded = np.zeros((groups, rows, blocks * block))
    padded[:, :, :cols] = np.abs(weight)
    by_block = padded.reshape(groups, rows, blocks, block)
    mask = np.zeros_like(by_block, dtype=bool)
    np.put_along_axis(mask, np.argmax(by_block, axis=3)[..., None], True, axis=3)
    mask &= by_block.max(axis=3, keepdims=True) > 0
    return mask.reshape(groups, rows, blocks * block)[:, :, :cols]


def clip_scales(
    weight: np.ndarray, hessian: np.ndarray, qmax: int, ratios: np.ndarray
) -> np.ndarray:
    """Per row, the scale ``ratio · amax / qmax`` with the least Hessian-diagonal weighted rounding
    error."""
    amax = np.abs(weight).max(axis=2)
    importance = np.diagonal(hessian, axis1=1, axis2=2)[:, None, :]  # (groups, 1, cols)
    best_error = np.full(amax.shape, np.inf)
    best = amax / qmax
    for ratio in ratios:
        scales = np.where(amax > 0, ratio * amax / qmax, 1.0)
        error = np.sum(
            importance
            * np.square(weight - round_levels(weight, scales[..., None], qmax) * scales[..., None]),
            axis=2,
        )
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best = np.where(better, scales, best)
    return np.where(amax > 0, best, 1.0)


def gptq_levels(
    weight: np.ndarray,
    hessian: np.ndarray,
    scales: np.ndarray,
    qmax: int,
    pins: np.ndarray,
    *,
    damping: float = 0.01,
    act_order: bool = True,
    block: int = 128,
) -> np.ndarray:
    """Integer levels (as floats) for ``weight`` (groups, rows, cols) on per-element ``scales``
    (same shape).

    ``hessian`` is ``Σ x xᵀ`` per group (groups, cols, cols); ``damping`` is added to its diagonal
    as a fraction of the mean diagonal. Elements in ``pins`` (``peak_pins``) are set to ``±qmax``
    with their sign (module docstring).

    Memory: a wide layer's matrices are each as big as a small model (8192 x 8192 in float64 is
    512 MiB), so no more of them live at once than the algorithm needs: the Hessian's inverse factor
    is made before the reordered weight, a per-channel scale (constant along the columns) stays a
    broadcast view, and the pinned levels are looked up per column.
    """
    groups, rows, cols = weight.shape
    order, upper = _ordered_inverse_factor(hessian, damping, act_order)

    def reordered(array: np.ndarray) -> np.ndarray:
        return np.take_along_axis(np.broadcast_to(array, weight.shape), order[:, None, :], axis=2)

    w = reordered(np.asarray(weight, np.float64))
    scales = np.broadcast_to(np.asarray(scales, np.float64), weight.shape)
    s = scales if scales.strides[2] == 0 else reordered(scales)
    pinned, negative = reordered(pins), reordered(weight < 0)

    levels = np.zeros_like(w)
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        errors = np.zeros((groups, rows, stop - start))
        for i in range(start, stop):
            column = w[:, :, i]
            q = np.clip(np.rint(column / s[:, :, i]), -qmax, qmax)
            q = np.where(pinned[:, :, i], np.where(negative[:, :, i], -qmax, qmax), q)
            levels[:, :, i] = q
            error = (column - q * s[:, :, i]) / upper[:, i, i][:, None]
            w[:, :, i:stop] -= error[:, :, None] * upper[:, None, i, i:stop]
            errors[:, :, i - start] = error
        if stop < cols:
            w[:, :, stop:] -= errors @ upper[:, start:stop, stop:]
    del w, upper
    inverse = np.argsort(order, axis=1)
    return np.take_along_axis(levels, inverse[:, None, :], axis=2)


def _ordered_inverse_factor(
    hessian: np.ndarray, damping: float, act_order: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The column order (by decreasing ``diag(H)`` with ``act_order``, per group) and the upper
    Cholesky factor of the reordered ``(H + λI)⁻¹``. Inputs that were always zero get a diagonal
    of 1: nothing to trade against, they round plainly."""
    groups, cols, _ = hessian.shape
    h = np.array(hessian, dtype=np.float64)
    g_idx, c_idx = np.nonzero(np.diagonal(h, axis1=1, axis2=2) <= 0)
    h[g_idx, c_idx, c_idx] = 1.0
    order = (
        np.argsort(-np.diagonal(h, axis1=1, axis2=2), axis=1, kind="stable")
        if act_order
        else np.broadcast_to(np.arange(cols), (groups, cols))
    )
    h = np.take_along_axis(h, order[:, :, None], axis=1)
    h = np.take_along_axis(h, order[:, None, :], axis=2)
    return order, _inverse_cholesky(h, damping)


def _inverse_cholesky(h: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` per group, raising λ until H is positive definite.
    Each intermediate is let go as soon as the next is made (see ``gptq_levels`` on memory)."""
    cols = h.shape[-1]
    mean = np.mean(np.diagonal(h, axis1=1, axis2=2), axis=1)[:, None]
    diagonal = np.arange(cols)
    for attempt in range(6):
        damped = h.copy()
        damped[:, diagonal, diagonal] += (damping * 10**attempt) * mean
        try:
            lower = np.linalg.cholesky(damped)
            del damped
            inverse_lower = np.linalg.inv(lower)
            del lower
            inverse = np.swapaxes(inverse_lower, 1, 2) @ inverse_lower
            del inverse_lower
            return np.swapaxes(np.linalg.cholesky(inverse), 1, 2)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError(
        "the layer's input Hessian stays singular even with 10^5 times the damping"
    )


def output_error(weight: np.ndarray, dequantized: np.ndarray, hessian: np.ndarray) -> float:
    """``tr((W − Q) H (W − Q)ᵀ) / tr(W H Wᵀ)``: the layer's output error relative to its output
    energy."""
    delta = np.asarray(weight, np.float64) - dequantized
    noise = _energy(delta, hessian)
    del delta
    signal = _energy(np.asarray(weight, np.float64), hessian)
    return noise / signal if signal > 0 else noise


def _energy(matrix: np.ndarray, hessian: np.ndarray) -> float:
    """``tr(M H Mᵀ)``, with one temporary as big as ``M``."""
    product = matrix @ hessian
    product *= matrix
    return float(np.sum(product))
