"""Packing a MatMul weight into onnxruntime's ``com.microsoft.MatMulNBits`` layout.

The contrib op's contract (onnxruntime ContribOperators.md, MatMulNBits): ``Y = A @ dequant(B)^T``
with attributes ``K``, ``N``, ``bits`` (2, 4 or 8 on the CPU kernel), ``block_size`` (a power of two
of at least 16) and ``accuracy_level``. ``B`` is uint8 ``[N, ceil(K / block_size), block_size * bits
/ 8]``: column n of the weight, cut into blocks along K, each block's levels stored unsigned and
packed low bits first. ``scales`` is ``[N * blocks]`` in A's type. Without a ``zero_points`` input
the zero point is ``2^(bits-1)``, so the symmetric grid of ``mpqc.passes.lib.grid`` (levels in
``[-q, q]``) is stored as ``level + 2^(bits-1)`` and no zero points are written. A last, partial
block is padded with the zero point (level 0). ``accuracy_level`` 1 computes in float32: the output
is ``A @ W_q`` with ``W_q`` exactly ``grid.fake_quant_weight(W, bits, block)``; level 4 first
rounds A to int8 per block of K (symmetric, a · 127 / max|a| rounded half to even: measured against
the kernel), faster on x86, and simulated by the evaluator too.
"""

from __future__ import annotations

import numpy as np

from mpqc.passes.lib.grid import quantize_weight_blocked, weight_grid

__all__ = ["nbits_bytes", "pack_matmul_nbits"]

_FLOAT32 = 4


def pack_matmul_nbits(
    weight: np.ndarray, bits: int, block_size: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(B as uint8 [N, blocks, blob], scales as float32 [N * blocks], container width) for a [K, N]
    weight."""
    width = weight_grid(bits).width
    k, n = weight.shape
    levels, scales = quantize_weight_blocked(weight, bits, 0, block_size)  # [K, N], [blocks, N]
    blocks = scales.shape[0]
    stored = np.full((n, blocks * block_size), 2 ** (width - 1), np.uint32)
    stored[:, :k] = levels.T.astype(np.int64) + 2 ** (width - 1)
    per_byte = 8 // width
    grouped = stored.reshape(n, blocks, block_size // per_byte, per_byte)
    packed = np.zeros(grouped.shape[:-1], np.uint32)
    for position in range(per_byte):
        packed |= grouped[..., position] << (width * position)
    return packed.astype(np.uint8), np.ascontiguousarray(scales.T).reshape(-1), width


def nbits_bytes(k: int, n: int, bits: int, block_size: int) -> int:
    """Bytes of B and scales that ``pack_matmul_nbits`` writes for a [K, N] weight."""
    blocks = -(-k // block_size)
    return n * blocks * (block_size * weight_grid(bits).width // 8 + _FLOAT32)
