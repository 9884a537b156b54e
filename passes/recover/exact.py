"""Writing recovered weights that ``lower-qdq`` reproduces bit for bit.

``recover`` does not store integers: it rewrites the layer's float weight, and ``lower-qdq`` (and the
evaluator, and the size footprint) quantize that weight as they quantize any other, with
``grid.quantize_weight``. So the float weight must be a fixed point of ``grid.fake_quant_weight``:
its per-channel scale recomputed from ``max |w| / qmax`` must be the scale it was built on, and
dividing by that scale must give back the levels. Two things make that hold:

- every channel keeps a level at ``±qmax`` (or is all zero): GPTQ pins one (``gptq.gptq_levels``);
- the scale survives the float32 round trip ``s -> fl(qmax·s) / qmax``, which it does not always
  do (the product and the quotient each round): starting from the wanted scale, take the scale the
  grid recomputes until it stops moving (at most one step in practice; tested with hypothesis).
"""

from __future__ import annotations

import numpy as np

from mpqc.passes.grid import fake_quant_weight, weight_grid, weight_scales

__all__ = ["on_grid"]

_MAX_STEPS = 8


def on_grid(levels: np.ndarray, scales: np.ndarray, bits: int, axis: int) -> np.ndarray | None:
    """``levels · scales`` as float32 weights that ``fake_quant_weight(·, bits, axis)`` returns unchanged.

    ``levels`` are integers in the weight's layout; ``scales`` one per channel along ``axis``. Every
    channel must be all zero or reach ``±qmax``. None when no float32 scale reproduces itself (it has
    not happened; the caller then keeps the layer's original weight).
    """
    qmax = weight_grid(bits).qmax
    peaks = np.abs(np.moveaxis(levels, axis, 0).reshape(levels.shape[axis], -1)).max(axis=1)
    if np.any((peaks != 0) & (peaks != qmax)):
        raise ValueError(f"every channel must reach ±{qmax} or be zero, got peaks {sorted(set(peaks.tolist()))}")
    shape = [1] * levels.ndim
    shape[axis] = -1
    scales = np.where(peaks > 0, scales, 1.0).astype(np.float32)
    as_float = levels.astype(np.float32)
    for _ in range(_MAX_STEPS):
        weight = (as_float * scales.reshape(shape)).astype(np.float32)
        recomputed = weight_scales(weight, bits, axis)
        if np.array_equal(recomputed, scales):
            break
        scales = recomputed
    else:
        return None
    return weight if np.array_equal(fake_quant_weight(weight, bits, axis), weight) else None
