"""``sensitivity-entropy``: EAGL — how much of a layer's weight information survives b bits. No
data.

EAGL (Bablani et al., arXiv 2301.13330; METHODS.md §4) reads a layer's importance off the entropy of
its quantized weights: ``H(b) = -sum_k p_k log2 p_k`` with ``p_k`` the fraction of the weights
stored as integer level ``k``. The histogram counts exactly the integers ``lower-qdq`` would store
(per-channel symmetric grid from ``grid.quantize_weight``), over the whole tensor. A layer whose
weights spread over many levels uses its bits; one whose weights already sit on a few levels loses
nothing when cut.

The score must say how much damage *lowering* does, so it compares each candidate with the highest
one, ``b_hi``:

- ``relative`` (default): ``1 - H(b) / H(b_hi)``, the fraction of the layer's weight information
  that b bits destroy — 0 at ``b_hi`` and for weights that b bits still represent exactly (three
  distinct values at any b >= 2), near 1 when nearly every weight collapses onto one level (a tensor
  whose few outliers stretch the grid). Being scale-free it ranks layers of different sizes on one
  footing.
- ``absolute``: ``H(b_hi) - H(b)``, bits of information lost per weight.
- ``params``: ``N_l * (H(b_hi) - H(b))``, bits lost over the whole tensor: EAGL's knapsack variant,
  where a big layer that loses a little per weight loses a lot in total.

The raw entropies go to ``mpqc.sensinfo.entropy`` (``{"H": {"w4": ...}, "params": N}``). Weights
only: activations need data. Cost: one quantization and one ``np.bincount`` per layer and candidate.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from mpqc.passes.analysis.sensitivity_base import SensitivityPass, WeightCandidates
from mpqc.passes.infra.base import option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.grid import weight_grid

__all__ = ["SensitivityEntropyPass", "entropy", "level_counts", "weight_entropy"]

Score = Literal["relative", "absolute", "params"]


def weight_entropy(weight: np.ndarray, bits: int, axis: int) -> float:
    """Entropy in bits of the per-channel quantized integer levels of ``weight`` at ``bits``."""
    return entropy(level_counts(weight, (bits,), axis)[0])


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -np.sum(p * np.log2(p))))


#: Float32 represents every integer below 2^23 exactly as 2^23 + k, with k in the low mantissa bits.
_MAGIC = np.float32(2**23)
_CHUNK = 1 << 18  # elements per block: small enough to stay in cache


def level_counts(weight: np.ndarray, bits: tuple[int, ...], axis: int) -> list[np.ndarray]:
    """Per bit-width, how many weights ``grid.quantize_weight`` stores at each level (qmin first).

    The integers are exactly those of ``quantize_weight`` (same float32 scales, division, round half
    to even and clip), but counted fast enough for large models (timings in bench/RESULTS.md §4):
    numpy's float-to-int cast and ``bincount`` dominate a naive version, so the tensor is walked in
    cache-sized blocks, the levels of several bit-widths are packed into one joint code (mixed
    radix, exact in float32 below 2^23), turned into integers by the 2^23 mantissa trick, and
    histogrammed with one ``bincount`` per block; the per-bit counts are the joint histogram's
    marginals.
    """
    # Contiguous rows: a MatMul's channel axis is the last, and walking a transposed view block by
    # block reads memory with a stride of a whole row (bench/RESULTS.md §4).
    rows = np.ascontiguousarray(
        np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1), dtype=np.float32
    )
    amax = np.maximum(rows.max(axis=1), -rows.min(axis=1)).astype(
        np.float64
    )  # as weight_scales does
    counts: dict[int, np.ndarray] = {}
    for group in _joint_groups(bits):
        grids = [weight_grid(b) for b in group]
        radix = np.cumprod([1] + [g.levels for g in grids[:-1]])
        joint = np.zeros(int(radix[-1]) * grids[-1].levels, np.int64)
        scales = [
            (np.where(amax > 0, amax / g.qmax, 1.0)).astype(np.float32)[:, None] for g in grids
        ]
        per = max(1, _CHUNK // max(1, rows.shape[1]))
        levels = np.empty((min(per, rows.shape[0]), rows.shape[1]), np.float32)
        code = np.empty_like(levels)
        for start in range(0, rows.shape[0], per):
            block = rows[start : start + per]
            t, c = levels[: block.shape[0]], code[: block.shape[0]]
            c.fill(_MAGIC)
            for grid, scale, step in zip(grids, scales, radix, strict=True):
                np.divide(block, scale[start : start + per], out=t)
                np.rint(t, out=t)
                np.clip(t, grid.qmin, grid.qmax, out=t)
                t -= grid.qmin
                t *= np.float32(step)
                c += t
            joint += np.bincount((c.view(np.int32) & 0x7FFFFF).ravel(), minlength=joint.size)
        table = joint.reshape([g.levels for g in reversed(grids)])  # the last grid varies slowest
        for i, b in enumerate(group):
            keep = len(group) - 1 - i
            counts[b] = table.sum(axis=tuple(a for a in range(len(group)) if a != keep))
    return [counts[b] for b in bits]


def _joint_groups(bits: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Bit-widths packed into groups whose joint level count stays below 2^22."""
    groups: list[tuple[int, ...]] = []
    size = 0
    for b in sorted(set(bits)):
        levels = weight_grid(b).levels
        if groups and size * levels < 2**22:
            groups[-1] += (b,)
            size *= levels
        else:
            groups.append((b,))
            size = levels
    return groups


@register
class SensitivityEntropyPass(SensitivityPass):
    name = "sensitivity-entropy"
    metric = "entropy"

    @dataclasses.dataclass(frozen=True)
    class Options(WeightCandidates):
        score: Score = option(
            "relative",
            "relative: 1 - H(b)/H(b_hi); absolute: H(b_hi) - H(b); params: N * (H(b_hi) - H(b))",
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        wbits = self.weight_bits()
        for layer in self.layers(model):
            weight = layer.weight_array()
            counts = level_counts(weight, wbits, layer.channel_axis)
            h = {b: entropy(c) for b, c in zip(wbits, counts, strict=True)}
            top = h[wbits[-1]]
            scores = {f"w{b}": self._score(top, h[b], weight.size) for b in wbits}
            self.write(
                layer, scores, {"H": {f"w{b}": v for b, v in h.items()}, "params": int(weight.size)}
            )
        return ir.passes.PassResult(model, modified=True)

    def _score(self, top: float, h: float, params: int) -> float:
        lost = max(0.0, top - h)  # quantizing coarser never adds information; clamp float noise
        if self.options.score == "relative":
            return lost / top if top > 0 else 0.0
        if self.options.score == "absolute":
            return lost
        return params * lost
