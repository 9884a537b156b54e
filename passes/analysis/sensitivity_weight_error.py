"""``sensitivity-weight-error``: how much noise b-bit weights add, relative to the weights. No data.

The score of ``w{b}`` is the quantization noise-to-signal ratio of the layer's weight on the per-channel
grid that ``lower-qdq`` uses: ``||W - Q_b(W)||^2 / ||W||^2``, i.e. 1/SQNR. It is scale-free, so a
layer whose few outliers stretch every channel's grid (and round the bulk of its weights to zero)
scores high whatever its magnitude, and weights that the grid holds exactly score 0. Option
``by_params`` multiplies by the layer's parameter count, for searches that want total error.

``mpqc.sensinfo.weight-error`` keeps the SQNR in dB per candidate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from mpqc.passes.analysis.sensitivity_base import SensitivityPass, WeightCandidates
from mpqc.passes.base import option
from mpqc.passes.grid import fake_quant_weight
from mpqc.passes.registry import register

__all__ = ["SensitivityWeightError", "weight_noise_ratio"]


def weight_noise_ratio(weight: np.ndarray, bits: int, axis: int) -> float:
    """``||W - Q_b(W)||^2 / ||W||^2`` on the per-channel grid (0 for an all-zero weight)."""
    w = weight.astype(np.float64)
    energy = float(np.sum(w * w))
    if energy == 0.0:
        return 0.0
    error = w - fake_quant_weight(weight, bits, axis).astype(np.float64)
    return float(np.sum(error * error)) / energy


@register
class SensitivityWeightError(SensitivityPass):
    name = "sensitivity-weight-error"
    metric = "weight-error"

    @dataclasses.dataclass(frozen=True)
    class Options(WeightCandidates):
        by_params: bool = option(False, "multiply each score by the layer's parameter count")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        wbits = self.weight_bits()
        for layer in self.layers(model):
            weight = layer.weight_array()
            ratios = {b: weight_noise_ratio(weight, b, layer.channel_axis) for b in wbits}
            scale = weight.size if self.options.by_params else 1
            self.write(
                layer,
                {f"w{b}": r * scale for b, r in ratios.items()},
                {"sqnr_db": {f"w{b}": (10 * np.log10(1 / r) if r > 0 else float("inf")) for b, r in ratios.items()}},
            )
        return ir.passes.PassResult(model, modified=True)
