"""``sensitivity-weight-error``: how much noise b-bit weights add, relative to the weights. No data.

The score of ``w{b}`` is the quantization noise-to-signal ratio of the layer's weight on the
per-channel grid that ``lower-qdq`` uses: ``||W - Q_b(W)||^2 / ||W||^2``, i.e. 1/SQNR. It is
scale-free, so a layer whose few outliers stretch every channel's grid (and round the bulk of its
weights to zero) scores high whatever its magnitude, and weights that the grid holds exactly score
0. Option ``by_params`` multiplies by the layer's parameter count, for searches that want total
error.

``mpqc.sensinfo.weight-error`` keeps the SQNR in dB per candidate.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from mpqc.passes.analysis.sensitivity_base import SensitivityPass, WeightCandidates
from mpqc.passes.infra.base import option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.grid import weight_grid

__all__ = ["SensitivityWeightErrorPass", "weight_noise_ratios"]

_CHUNK = 1 << 18  # elements per block: small enough to stay in cache


def weight_noise_ratios(weight: np.ndarray, bits: tuple[int, ...], axis: int) -> list[float]:
    """Per bit-width, ``||W - Q_b(W)||^2 / ||W||^2`` on the per-channel grid (0 for an all-zero
    weight).

    ``Q_b`` is exactly ``grid.fake_quant_weight`` (the same float32 scales, division, round half to
    even and clip), computed in cache-sized blocks of rows in float32 (pairwise sums per block,
    added in float64), avoiding the whole-tensor float64 temporaries that made it slow
    (bench/RESULTS.md §4).
    """
    # Contiguous rows: a MatMul's channel axis is the last, and walking a transposed view block by
    # block reads memory with a stride of a whole row (bench/RESULTS.md §4).
    rows = np.ascontiguousarray(
        np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1), dtype=np.float32
    )
    energy = float(np.einsum("ij,ij->", rows, rows, dtype=np.float64))
    if energy == 0.0:
        return [0.0] * len(bits)
    amax = np.maximum(rows.max(axis=1), -rows.min(axis=1)).astype(
        np.float64
    )  # as weight_scales does
    per = max(1, _CHUNK // max(1, rows.shape[1]))
    scratch = np.empty((min(per, rows.shape[0]), rows.shape[1]), np.float32)
    ratios = []
    for b in bits:
        grid = weight_grid(b)
        scales = np.where(amax > 0, amax / grid.qmax, 1.0).astype(np.float32)[:, None]
        noise = 0.0
        for start in range(0, rows.shape[0], per):
            block, scale = rows[start : start + per], scales[start : start + per]
            t = scratch[: block.shape[0]]
            np.divide(block, scale, out=t)
            np.rint(t, out=t)
            np.clip(t, grid.qmin, grid.qmax, out=t)
            t *= scale
            np.subtract(block, t, out=t)
            np.square(t, out=t)
            noise += float(t.sum())  # numpy's pairwise float32 sum: ~1e-7 relative per block
        ratios.append(noise / energy)
    return ratios


@register
class SensitivityWeightErrorPass(SensitivityPass):
    name = "sensitivity-weight-error"
    metric = "weight-error"

    @dataclasses.dataclass(frozen=True)
    class Options(WeightCandidates):
        by_params: bool = option(False, "multiply each score by the layer's parameter count")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        wbits = self.weight_bits()
        for layer in self.layers(model):
            weight = layer.weight_array()
            ratios = dict(
                zip(wbits, weight_noise_ratios(weight, wbits, layer.channel_axis), strict=True)
            )
            scale = weight.size if self.options.by_params else 1
            self.write(
                layer,
                {f"w{b}": r * scale for b, r in ratios.items()},
                {
                    "sqnr_db": {
                        f"w{b}": (10 * np.log10(1 / r) if r > 0 else float("inf"))
                        for b, r in ratios.items()
                    }
                },
            )
        return ir.passes.PassResult(model, modified=True)
