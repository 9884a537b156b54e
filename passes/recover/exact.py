"""Writing recovered weights that ``lower-qdq`` reproduces bit for bit.

``recover`` does not store integers: it rewrites the layer's float weight, and ``lower-qdq`` (and
the evaluator, and the size footprint) quantize that weight as they quantize any other, with
``grid.quantize_weight`` (per channel) or ``grid.quantize_weight_blocked`` (per block along K). So
the float weight must be a fixed point of ``grid.fake_quant_weight`` in the layer's layout: each
scale recomputed from ``max |w| / qmax`` must be the scale the weight was built on, and dividing by
that scale must give back the levels. Two things make that hold:

- every channel (block) keeps a level at ``±qmax`` or is all zero: GPTQ pins one
  (``gptq.peak_pins``);
- the scale survives the float32 round trip ``s -> fl(qmax·s) / qmax``, which it does not always
  do (the product and the quotient each round): starting from the wanted scale, take the scale the
  grid recomputes until it stops moving (at most one step in practice; tested with hypothesis).
"""

from __future__ import annotations

import numpy as np

from mpqc.passes.lib.grid import (
    fake_quant_weight,
    quantize_weight_blocked,
    weight_grid,
    weight_scales,
)

__all__ = ["on_grid"]

_MAX_STEPS = 8


def on_grid(
    levels: np.ndarray,
    scales: np.ndarray,
    bits: int,
    axis: int,
    block: int = 0,
    block_axis: int = 0,
) -> np.ndarray | None:
    """``levels · scales`` as float32 weights that ``fake_quant_weight`` returns unchanged.

    ``levels`` are integers in the weight's layout. Per channel (``block`` 0): one scale per
    channel along ``axis``. Per block: ``scales`` as ``quantize_weight_blocked`` returns them,
    ``block_axis`` cut to the number of blocks. Every channel (block) must be all zero or reach
    ``±qmax``. None when no float32 scale reproduces itself (it has not happened; the caller then
    keeps the original weight).
    """
    qmax = weight_grid(bits).qmax
    expand, recompute = (
        _per_block(levels.shape, bits, block, block_axis)
        if block
        else _per_channel(levels.ndim, bits, axis)
    )
    peaks = (
        _peaks(np.abs(levels), block, block_axis)
        if block
        else np.abs(np.moveaxis(levels, axis, 0).reshape(levels.shape[axis], -1)).max(axis=1)
    )
    if np.any((peaks != 0) & (peaks != qmax)):
        raise ValueError(
            f"every channel or block must reach ±{qmax} or be zero, "
            f"got peaks {sorted(set(np.ravel(peaks).tolist()))}"
        )
    scales = np.where(peaks > 0, scales, 1.0).astype(np.float32)
    as_float = levels.astype(np.float32)
    for _ in range(_MAX_STEPS):
        weight = (as_float * expand(scales)).astype(np.float32)
        recomputed = recompute(weight)
        if np.array_equal(recomputed, scales):
            break
        scales = recomputed
    else:
        return None
    exact = np.array_equal(fake_quant_weight(weight, bits, axis, block, block_axis), weight)
    return weight if exact else None


def _per_channel(ndim: int, bits: int, axis: int):
    shape = [1] * ndim
    shape[axis] = -1
    return (lambda scales: scales.reshape(shape)), (
        lambda weight: weight_scales(weight, bits, axis)
    )


def _per_block(shape: tuple[int, ...], bits: int, block: int, block_axis: int):
    k = shape[block_axis]

    def expand(scales: np.ndarray) -> np.ndarray:
        return np.take(np.repeat(scales, block, axis=block_axis), np.arange(k), axis=block_axis)

    return expand, (lambda weight: quantize_weight_blocked(weight, bits, block_axis, block)[1])


def _peaks(magnitudes: np.ndarray, block: int, block_axis: int) -> np.ndarray:
    """Largest level magnitude per block, in ``quantize_weight_blocked``'s scale layout."""
    k = magnitudes.shape[block_axis]
    blocks = -(-k // block)
    moved = np.moveaxis(magnitudes, block_axis, 0)
    padded = np.zeros((blocks * block, *moved.shape[1:]), magnitudes.dtype)
    padded[:k] = moved
    return np.moveaxis(padded.reshape(blocks, block, *moved.shape[1:]).max(axis=1), 0, block_axis)
