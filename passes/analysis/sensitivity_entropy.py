"""``sensitivity-entropy``: EAGL — how much of a layer's weight information survives b bits. No data.

EAGL (Bablani et al., arXiv 2301.13330; METHODS.md §4) reads a layer's importance off the entropy of
its quantized weights: ``H(b) = -sum_k p_k log2 p_k`` with ``p_k`` the fraction of the weights stored
as integer level ``k``. The histogram counts exactly the integers ``lower-qdq`` would store (per-channel
symmetric grid from ``grid.quantize_weight``), over the whole tensor. A layer whose weights spread over
many levels uses its bits; one whose weights already sit on a few levels loses nothing when cut.

The score must say how much damage *lowering* does, so it compares each candidate with the highest
one, ``b_hi``:

- ``relative`` (default): ``1 - H(b) / H(b_hi)``, the fraction of the layer's weight information that
  b bits destroy — 0 at ``b_hi`` and for weights that b bits still represent exactly (three distinct
  values at any b >= 2), near 1 when nearly every weight collapses onto one level (a tensor whose few
  outliers stretch the grid). Being scale-free it ranks layers of different sizes on one footing.
- ``absolute``: ``H(b_hi) - H(b)``, bits of information lost per weight.
- ``params``: ``N_l * (H(b_hi) - H(b))``, bits lost over the whole tensor: EAGL's knapsack variant,
  where a big layer that loses a little per weight loses a lot in total.

The raw entropies go to ``mpqc.sensinfo.entropy`` (``{"H": {"w4": ...}, "params": N}``). Weights only:
activations need data. Cost: one quantization and one ``np.bincount`` per layer and candidate.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from mpqc.passes.analysis.sensitivity_base import SensitivityPass, WeightCandidates
from mpqc.passes.base import option
from mpqc.passes.grid import quantize_weight, weight_grid
from mpqc.passes.registry import register

__all__ = ["SensitivityEntropy", "weight_entropy"]

Score = Literal["relative", "absolute", "params"]


def weight_entropy(weight: np.ndarray, bits: int, axis: int) -> float:
    """Entropy in bits of the per-channel quantized integer levels of ``weight`` at ``bits``."""
    q, _ = quantize_weight(weight, bits, axis)
    grid = weight_grid(bits)
    counts = np.bincount((q.reshape(-1).astype(np.int32) - grid.qmin), minlength=grid.levels)
    p = counts[counts > 0] / q.size
    return float(max(0.0, -np.sum(p * np.log2(p))))


@register
class SensitivityEntropy(SensitivityPass):
    name = "sensitivity-entropy"
    metric = "entropy"

    @dataclasses.dataclass(frozen=True)
    class Options(WeightCandidates):
        score: Score = option("relative", "relative: 1 - H(b)/H(b_hi); absolute: H(b_hi) - H(b); params: N * (H(b_hi) - H(b))")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        wbits = self.weight_bits()
        for layer in self.layers(model):
            weight = layer.weight_array()
            entropy = {b: weight_entropy(weight, b, layer.channel_axis) for b in wbits}
            top = entropy[wbits[-1]]
            scores = {f"w{b}": self._score(top, h, weight.size) for b, h in entropy.items()}
            self.write(layer, scores, {"H": {f"w{b}": h for b, h in entropy.items()}, "params": int(weight.size)})
        return ir.passes.PassResult(model, modified=True)

    def _score(self, top: float, h: float, params: int) -> float:
        lost = max(0.0, top - h)  # quantizing coarser never adds information; clamp float noise
        if self.options.score == "relative":
            return lost / top if top > 0 else 0.0
        if self.options.score == "absolute":
            return lost
        return params * lost
