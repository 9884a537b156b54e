"""The lowering's weight-layout options and the geometry they act on.

``WeightLayout`` holds ``lower-qdq``'s layout options (``weight_only``, ``block_size``,
``accuracy_level``); which form each layer's weight then takes is the lowering plan's decision
(``passes/lib/plan``). ``block_axis`` and ``kn_weight`` say along which axis a weight is blocked
and how a MatMul/Gemm weight reads as [K, N].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mpqc.ir.layers import Layer

__all__ = [
    "DEFAULT_NBITS_BLOCK",
    "PER_CHANNEL",
    "NBITS_MIN_K",
    "NBITS_WIDTHS",
    "WeightLayout",
    "block_axis",
    "kn_weight",
]

#: Container widths onnxruntime 1.32's MatMulNBits CPU kernel runs (3 bits sit in 4, narrowed).
NBITS_WIDTHS = (2, 4, 8)
#: The smallest block MatMulNBits takes: a shorter K would be mostly padding.
NBITS_MIN_K = 16
#: MatMulNBits block when none is asked for: onnxruntime's quantizer default.
DEFAULT_NBITS_BLOCK = 32


def block_axis(layer: Layer) -> int | None:
    """The axis a weight's blocks run along: K of a MatMul/Gemm weight, the embedding axis of a
    Gather table; None for layers that are never blocked."""
    node = layer.node
    ndim = layer.weight_array().ndim
    if node.op_type == "MatMul":
        return ndim - 2
    if node.op_type == "Gemm":
        return 1 if node.attributes.get_int("transB", 0) else 0
    if node.op_type == "Gather":
        return ndim - 1
    return None


def kn_weight(layer: Layer) -> np.ndarray:
    """A 2-D MatMul/Gemm weight as [K, N] (a Gemm with transB stores it as [N, K])."""
    weight = layer.weight_array()
    return (
        weight.T
        if layer.node.op_type == "Gemm" and layer.node.attributes.get_int("transB", 0)
        else weight
    )


@dataclasses.dataclass(frozen=True)
class WeightLayout:
    """The lowering's weight options (``lower-qdq``'s ``weight_only`` and ``block_size``)."""

    #: MatMuls that qualify become MatMulNBits; activations stay float.
    weight_only: bool = False
    #: Per-block quantization along K for MatMul/Gemm (0: per channel); MatMulNBits' block when set.
    block_size: int = 0
    #: MatMulNBits' accuracy_level: 4 (the default) also quantizes A to int8 per block of K
    #: (symmetric, a · 127 / max|a| rounded half to even), which onnxruntime runs faster than level
    #: 1 (bench/RESULTS.md §7) at the same task metric; 1 computes in float32.
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        size = self.block_size
        if size and (size < 16 or size & (size - 1)):
            raise ValueError(
                f"block size {size} must be 0 (per channel) or a power of two of at least 16 "
                "(16, 32, 64, 128...)"
            )
        if self.accuracy_level not in (1, 4):
            raise ValueError(
                f"accuracy level {self.accuracy_level} must be 1 (float32, exact) "
                "or 4 (int8 activations, faster)"
            )

    @property
    def nbits_block(self) -> int:
        return self.block_size or DEFAULT_NBITS_BLOCK


#: The default layout: weights per channel, activations as chosen.
PER_CHANNEL = WeightLayout()
