"""Which form a layer's weight takes in the lowered model: one rule for lowering, size and evaluation.

The size budget and the evaluator are only exact if they know, for every layer and choice, the
tensors ``lower-qdq`` writes and the numbers they dequantize to. Three forms exist:

- **per channel** (the default): DequantizeLinear with one scale per output channel;
- **per block along K** (``block_size`` > 0; MatMul and Gemm weights in 2- to 4-bit containers):
  DequantizeLinear's blocked layout (opset 21), one scale per ``block_size`` consecutive K values of
  each output column. 8- and 16-bit containers stay per channel: onnxruntime 1.32 fuses a blocked
  INT8 DequantizeLinear behind quantized activations into MatMulIntegerToFloat and ignores the
  blocks (wrong outputs), and an 8-bit grid gains little from blocks that cost 4 bytes per block;
- **MatMulNBits** (``weight_only``): a MatMul with a constant 2-D weight whose K is at least
  ``NBITS_MIN_K`` — or a plain Gemm (alpha = beta = 1, A not transposed, bias absent or one value
  per output column, which becomes MatMulNBits' bias) — at float activations and 2-8-bit weights,
  becomes onnxruntime's
  ``com.microsoft.MatMulNBits`` — the blocked layout packed as the kernel reads it, dequantized in
  registers instead of into a float copy of the weight. It is an onnxruntime contrib op that other
  runtimes do not load, hence only on request. Small MatMuls qualify too: onnxruntime would fuse
  their DequantizeLinear -> MatMul into MatMulNBits itself, at its default accuracy level 4 (int8
  activations), so emitting it explicitly at level 1 is what keeps their numbers the evaluator's;
- **GatherBlockQuantized** (``weight_only``): a Gather over a 2-D table in a 4-bit container
  becomes onnxruntime's ``com.microsoft.GatherBlockQuantized``, the table INT4 in blocks along the
  embedding axis: only the rows looked up are dequantized (a DequantizeLinear in front of a Gather
  would turn the whole table back into floats on every run). 8-bit tables already gather integers.

Blocked weights keep their bias float: an int32 bias at s_x·s_w needs one weight scale per channel.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mpqc.core.bits import FLOAT_BITS
from mpqc.ir.layers import Layer, constant_array
from mpqc.passes.lib.grid import weight_grid

__all__ = [
    "DEFAULT_NBITS_BLOCK",
    "NBITS_MIN_K",
    "NBITS_WIDTHS",
    "WeightLayout",
    "block_axis",
    "kn_weight",
]

#: Container widths onnxruntime 1.32's MatMulNBits CPU kernel runs (3 bits sit in 4 on a narrow grid).
NBITS_WIDTHS = (2, 4, 8)
#: The smallest block MatMulNBits takes: a shorter K would be mostly padding.
NBITS_MIN_K = 16
#: MatMulNBits block when none is asked for: onnxruntime's quantizer default.
DEFAULT_NBITS_BLOCK = 32
#: Containers whose blocked DequantizeLinear onnxruntime runs correctly (see the module docstring).
_BLOCKED_WIDTHS = (2, 4)


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


def _plain_gemm(layer: Layer) -> bool:
    """A Gemm that is A @ B + bias over columns: what MatMulNBits (with its bias input) computes."""
    node = layer.node
    attributes = node.attributes
    if attributes.get_float("alpha", 1.0) != 1.0 or attributes.get_int("transA", 0):
        return False
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return True
    bias = constant_array(node.inputs[2])
    n = kn_weight(layer).shape[1]
    return (
        attributes.get_float("beta", 1.0) == 1.0
        and bias is not None
        and bias.size == n
        and bias.shape[-1] == n
    )


@dataclasses.dataclass(frozen=True)
class WeightLayout:
    """The lowering's weight options (``lower-qdq``'s ``weight_only`` and ``block_size``)."""

    #: MatMuls that qualify become MatMulNBits; activations stay float.
    weight_only: bool = False
    #: Per-block quantization along K for MatMul/Gemm (0: per channel); MatMulNBits' block when set.
    block_size: int = 0
    #: MatMulNBits' accuracy_level: 4 (the default) also quantizes A to int8 per block of K (symmetric,
    #: a · 127 / max|a| rounded half to even), which onnxruntime runs 2.7x faster than level
    #: 1 on MiniLM (bench/RESULTS.md §7) at the same task metric; 1 computes in float32.
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        size = self.block_size
        if size and (size < 16 or size & (size - 1)):
            raise ValueError(
                f"block size {size} must be 0 (per channel) or a power of two of at least 16 (16, 32, 64, 128...)"
            )
        if self.accuracy_level not in (1, 4):
            raise ValueError(
                f"accuracy level {self.accuracy_level} must be 1 (float32, exact) or 4 (int8 activations, faster)"
            )

    @property
    def nbits_block(self) -> int:
        return self.block_size or DEFAULT_NBITS_BLOCK

    def matmul_nbits(self, layer: Layer, wbits: int, abits: int) -> bool:
        """Whether ``layer`` at (``wbits``, ``abits``) lowers to MatMulNBits."""
        op = layer.node.op_type
        if (
            not self.weight_only
            or op not in ("MatMul", "Gemm")
            or wbits == FLOAT_BITS
            or abits != FLOAT_BITS
        ):
            return False
        if layer.weight_array().ndim != 2 or (op == "Gemm" and not _plain_gemm(layer)):
            return False
        return kn_weight(layer).shape[0] >= NBITS_MIN_K and weight_grid(wbits).width in NBITS_WIDTHS

    def gather_blocked(self, layer: Layer, wbits: int) -> bool:
        """Whether ``layer`` (a table lookup) lowers to GatherBlockQuantized."""
        if not self.weight_only or layer.node.op_type != "Gather" or wbits == FLOAT_BITS:
            return False
        shape = layer.weight_array().shape
        return len(shape) == 2 and shape[1] >= NBITS_MIN_K and weight_grid(wbits).width == 4

    def block(self, layer: Layer, wbits: int, abits: int) -> int:
        """Block size along ``block_axis(layer)`` of the layer's stored weight; 0 = per channel."""
        if wbits == FLOAT_BITS:
            return 0
        if self.matmul_nbits(layer, wbits, abits) or self.gather_blocked(layer, wbits):
            return self.nbits_block
        if (
            self.block_size
            and layer.node.op_type in ("MatMul", "Gemm")
            and weight_grid(wbits).width in _BLOCKED_WIDTHS
        ):
            return self.block_size
        return 0
