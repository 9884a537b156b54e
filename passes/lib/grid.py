"""The quantization grid: one definition of scales, zero points and storage types.

Lowering, sensitivity analysis, the evaluator and recovery must agree to the last bit on what
"this layer at 4 bits" means, or what the search measured is not what ships. So the grid lives here
once:

- Weights are symmetric per output channel on a narrow grid ``[-(2^(b-1)-1), 2^(b-1)-1]`` (zero is
  exact, and the grid is the same whether the container is wider or not).
- Activations are asymmetric per tensor, unsigned ``[0, 2^b-1]`` by default (unsigned 8-bit is the
  fast path of onnxruntime's CPU kernels); the range always contains zero so padding and ReLU's zero
  are exact.
- Weights live in the smallest ONNX integer type that holds the grid — 2 bits in INT2, 3-4 in INT4,
  5-8 in INT8, 9-16 in INT16 — because that is what makes the file shrink. Activations live in at
  least 8 bits (UINT8/INT8, or 16): their containers cost no file bytes, and onnxruntime's fusions
  mishandle sub-byte activation types (a QLinearConv fed UINT2, a Clip fused into a UINT4
  quantizer). A grid narrower than its container (3, 5, 6, 7 bits...) keeps exactly the chosen
  bit-width's values: weights are rounded on the narrow grid before storage, and activations get a
  float Clip before QuantizeLinear.
- Weights may instead be quantized per block along the reduction axis K of a MatMul/Gemm (one scale
  per ``block_size`` consecutive K values of each output column): the layout of DequantizeLinear's
  ``block_size`` (opset 21) and of onnxruntime's ``MatMulNBits``. Blocks are the same narrow
  symmetric grid, so both layouts dequantize to the same numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

__all__ = [
    "Grid",
    "activation_grid",
    "activation_qparams",
    "fake_quant_activation",
    "fake_quant_weight",
    "quantize_weight_blocked",
    "min_opset",
    "quantize_weight",
    "weight_grid",
    "weight_scales",
]

_SIGNED = {2: ir.DataType.INT2, 4: ir.DataType.INT4, 8: ir.DataType.INT8, 16: ir.DataType.INT16}
_UNSIGNED = {
    2: ir.DataType.UINT2,
    4: ir.DataType.UINT4,
    8: ir.DataType.UINT8,
    16: ir.DataType.UINT16,
}
_NUMPY = {8: (np.int8, np.uint8), 16: (np.int16, np.uint16)}
#: Lowest ai.onnx opset whose QuantizeLinear/DequantizeLinear accept each container width.
_OPSET_FOR_WIDTH = {2: 25, 4: 21, 8: 13, 16: 21}


@dataclasses.dataclass(frozen=True)
class Grid:
    """The integer levels of one quantizer and the ONNX type that stores them."""

    bits: int
    signed: bool
    qmin: int
    qmax: int
    #: Narrowest container allowed: 2 for weights, 8 for activations (see the module docstring).
    min_width: int = 2

    @property
    def width(self) -> int:
        """Bits of the storage container."""
        return next(w for w in (2, 4, 8, 16) if w >= max(self.bits, self.min_width))

    @property
    def container(self) -> ir.DataType:
        return (_SIGNED if self.signed else _UNSIGNED)[self.width]

    @property
    def numpy_dtype(self) -> type[np.integer]:
        """The numpy type onnx_ir expects for the container (sub-byte types use int8/uint8)."""
        signed, unsigned = _NUMPY.get(self.width, (np.int8, np.uint8))
        return signed if self.signed else unsigned

    @property
    def narrow(self) -> bool:
        """Whether the grid uses fewer levels than its container holds."""
        full = 2**self.width
        return self.qmax - self.qmin + 1 < (full - 1 if self.signed else full)

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1


def weight_grid(bits: int) -> Grid:
    if not 2 <= bits <= 16:
        raise ValueError(f"weight bits must be between 2 and 16, got {bits}")
    q = 2 ** (bits - 1) - 1
    return Grid(bits, True, -q, q)


def activation_grid(bits: int, signed: bool = False) -> Grid:
    if not 2 <= bits <= 16:
        raise ValueError(f"activation bits must be between 2 and 16, got {bits}")
    if signed:
        return Grid(bits, True, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, min_width=8)
    return Grid(bits, False, 0, 2**bits - 1, min_width=8)


def min_opset(*grids: Grid) -> int:
    """Lowest opset whose Q/DQ ops accept all these grids' containers."""
    return max((_OPSET_FOR_WIDTH[g.width] for g in grids), default=13)


def _channel_view(w: np.ndarray, axis: int) -> np.ndarray:
    """``w`` as (channels, everything else)."""
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def weight_scales(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Per-channel scales that map each channel's largest magnitude to the grid's edge.

    All-zero channels get scale 1 so that dequantization is exact (0) and no division by zero
    occurs.
    """
    grid = weight_grid(bits)
    amax = np.abs(_channel_view(w.astype(np.float64), axis)).max(axis=1)
    scales = amax / grid.qmax
    return np.where(scales > 0, scales, 1.0).astype(np.float32)


def quantize_weight(
    w: np.ndarray, bits: int, axis: int, scales: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(integer levels in the container's numpy type, per-channel float32 scales)."""
    grid = weight_grid(bits)
    if scales is None:
        scales = weight_scales(w, bits, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    # Divide in float32, as QuantizeLinear does, so the levels match what a runtime would compute.
    q = np.clip(np.rint(w.astype(np.float32) / scales.reshape(shape)), grid.qmin, grid.qmax)
    return q.astype(grid.numpy_dtype), scales.astype(np.float32)


def quantize_lstm_weight(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """An LSTM's W or R [D, 4H, K] as onnxruntime's DynamicQuantizeLSTM reads it: (int8 levels
    [D, K, 4H], float32 scales [D, 4H]), a scale per direction and gate column (what
    ``quantize_dynamic`` writes; zero points are 0)."""
    directions, columns, k = w.shape
    levels, scales = quantize_weight(w.reshape(directions * columns, k), bits, 0)
    transposed = levels.reshape(directions, columns, k).transpose(0, 2, 1)
    return np.ascontiguousarray(transposed), scales.reshape(directions, columns)


def quantize_weight_blocked(
    w: np.ndarray, bits: int, axis: int, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-block quantization along ``axis``: (levels like ``w``, scales with ``axis`` cut to
    ceil(K / block_size)).

    Each block of ``block_size`` consecutive elements along ``axis`` (the last one possibly shorter)
    gets its own scale, its largest magnitude mapped to the grid's edge; all-zero blocks get scale
    1. This is DequantizeLinear's blocked layout: ``scales`` broadcast back by repeating each entry
    ``block_size`` times along ``axis``.
    """
    if block_size < 1:
        raise ValueError(f"block size must be positive, got {block_size}")
    grid = weight_grid(bits)
    axis %= w.ndim
    k = w.shape[axis]
    blocks = -(-k // block_size)
    moved = np.moveaxis(w.astype(np.float32), axis, 0)
    padded = np.zeros((blocks * block_size, *moved.shape[1:]), np.float32)
    padded[:k] = moved
    amax = np.abs(padded.reshape(blocks, block_size, *moved.shape[1:]).astype(np.float64)).max(
        axis=1
    )
    scales = (amax / grid.qmax).astype(np.float32)
    scales = np.where(scales > 0, scales, np.float32(1.0)).astype(np.float32)
    expanded = np.repeat(scales, block_size, axis=0)[:k]
    q = np.clip(np.rint(moved / expanded), grid.qmin, grid.qmax)
    return np.moveaxis(q, 0, axis).astype(grid.numpy_dtype), np.moveaxis(scales, 0, axis)


def fake_quant_weight(
    w: np.ndarray, bits: int, axis: int, block_size: int = 0, block_axis: int = 0
) -> np.ndarray:
    """``w`` rounded to the grid and back: what DequantizeLinear of the stored weight gives.

    ``block_size`` 0 is per channel along ``axis``; otherwise per block of ``block_size`` along
    ``block_axis`` (see ``quantize_weight_blocked``).
    """
    if block_size:
        q, scales = quantize_weight_blocked(w, bits, block_axis, block_size)
        expanded = np.repeat(scales, block_size, axis=block_axis % w.ndim)
        expanded = np.take(expanded, np.arange(w.shape[block_axis]), axis=block_axis)
        return (q.astype(np.float32) * expanded).astype(w.dtype)
    q, scales = quantize_weight(w, bits, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    return (q.astype(np.float32) * scales.reshape(shape)).astype(w.dtype)


def activation_qparams(lo: float, hi: float, grid: Grid) -> tuple[np.float32, int]:
    """(scale, zero point) that map [lo, hi] — widened to contain 0 — onto the grid."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return np.float32(1.0), 0 if grid.signed else grid.qmin
    scale = np.float32((hi - lo) / (grid.qmax - grid.qmin))
    zero_point = int(np.clip(np.rint(grid.qmin - lo / float(scale)), grid.qmin, grid.qmax))
    return scale, zero_point


def fake_quant_activation(x: np.ndarray, scale: float, zero_point: int, grid: Grid) -> np.ndarray:
    """QuantizeLinear then DequantizeLinear on the grid (float32 arithmetic, round half to even)."""
    q = np.clip(
        np.rint(x.astype(np.float32) / np.float32(scale)) + zero_point, grid.qmin, grid.qmax
    )
    return ((q - zero_point) * np.float32(scale)).astype(x.dtype)
