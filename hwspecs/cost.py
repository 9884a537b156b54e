"""The cost model: a roofline per layer over plain layer descriptors (no ONNX in here).

Why a roofline: a layer either waits on its multipliers or on memory, and which one it is decides
whether fewer bits help.  Lower bits speed up a compute-bound layer only on a chip that computes faster
at lower bits (BitFusion, BISMO, VNNI int8), and a memory-bound layer (depthwise convs, small-batch
MatMuls) only through the bytes it moves — HAQ's observation that edge and cloud accelerators want
different policies falls out of exactly this.

Per layer, for weight bits ``w`` and activation bits ``a`` (``None`` = float):

* ``latency = max(MACs / throughput(w, a), bytes / bandwidth(level)) + overheads`` where ``level`` is the
  nearest memory level the layer's working set (weights + input + output) fits in, and the overheads are
  the op's own fixed/per-element cost plus, for a quantized layer, a QuantizeLinear on its input and a
  DequantizeLinear on its output (a quantized island in a float graph, which is how mpqc lowers: Add,
  Softmax and friends stay float).  An *emulated* pair also unpacks its weights on every run (stored low-bit,
  widened to the kernel's type: ``weight_unpack`` per element) and, when the kernel is float,
  dequantizes its input.
* ``energy = MACs · energy_per_mac(w, a) + bytes · energy_per_byte(level)`` (Q/DQ energy is ignored).
* bytes are *stored* bytes: weights in the ONNX container the lowering writes (INT2, INT4, INT8, INT16;
  3-bit lives in INT4, etc., DESIGN.md) rounded up per tensor, plus one float32 scale per output channel,
  plus the bias (float32 or int32: 4 bytes each); activations likewise per element.
* ``BOPs = MACs · w · a`` with float counted as 32 × 32.

Everything is additive over layers, which the ILP/knapsack strategies rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mpqc.hwspecs.spec import FLOAT_BITS, HardwareSpec, Precision

CONTAINER_BITS = (2, 4, 8, 16, 32)
"""ONNX tensor element widths a quantized value is stored in (INT2/INT4/INT8/INT16, float32)."""
SCALE_BYTES = 4
"""Per-channel scales are float32; symmetric weights store no zero point."""
BIAS_BYTES = 4


def container_bits(bits: int | None) -> int:
    """Bits one element occupies in the written model: the smallest ONNX type that holds ``bits``."""
    if bits is None:
        return FLOAT_BITS
    return next(c for c in CONTAINER_BITS if c >= bits)


def tensor_bytes(elements: int, bits: int | None) -> int:
    """Stored bytes of one tensor, rounded up as packed sub-byte tensors are."""
    return math.ceil(elements * container_bits(bits) / 8)


@dataclass(frozen=True)
class LayerDesc:
    """What the cost model needs to know about one quantizable layer, and nothing about ONNX.

    ``macs`` counts multiply-accumulates for one inference; ``*_elems`` are element counts of the layer's
    (first) activation input and its output.  The shape facts are optional: HAQ's agent state uses them
    and ``c_out`` sets the number of per-channel scales (one per tensor when unknown).
    """

    name: str
    op_type: str
    macs: int
    weight_params: int
    input_elems: int
    output_elems: int
    bias_params: int = 0
    kernel: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    groups: int = 1
    depthwise: bool = False
    c_in: int | None = None
    c_out: int | None = None

    def __post_init__(self) -> None:
        for field_name in ("macs", "weight_params", "input_elems", "output_elems", "bias_params"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"LayerDesc {self.name!r}: {field_name} must be a non-negative int, got {value!r}")
        if self.groups < 1:
            raise ValueError(f"LayerDesc {self.name!r}: groups must be >= 1, got {self.groups}")


@dataclass(frozen=True)
class Cost:
    """The cost of one layer at one precision pair."""

    latency_s: float
    energy_j: float
    weight_bytes: int
    """Stored bytes of weights, per-channel scales and bias."""
    act_bytes: int
    """Bytes of input and output activations moved."""
    bops: int
    bound: Literal["compute", "memory"]
    native: bool
    """False when the pair is emulated in a wider type (storage saving, no compute speedup)."""


class CostModel:
    """Latency, energy, bytes and BOPs of layers on one ``HardwareSpec`` (see module docstring)."""

    def __init__(self, spec: HardwareSpec):
        self.spec = spec

    def weight_bytes(self, desc: LayerDesc, wbits: int | None) -> int:
        """Stored bytes of the layer's weights (in their ONNX container), per-channel scales and bias."""
        scales = 0 if wbits is None else SCALE_BYTES * (desc.c_out or 1)
        return tensor_bytes(desc.weight_params, wbits) + scales + BIAS_BYTES * desc.bias_params

    def act_bytes(self, desc: LayerDesc, abits: int | None) -> int:
        """Bytes of the layer's input and output activations at ``abits`` (float: 4 bytes each)."""
        return tensor_bytes(desc.input_elems, abits) + tensor_bytes(desc.output_elems, abits)

    def layer_cost(
        self, desc: LayerDesc, wbits: int | None, abits: int | None, *, act_signed: bool = False
    ) -> Cost:
        """Cost of ``desc`` at (``wbits``, ``abits``); ``None`` means float.  Raises
        ``UnsupportedPrecisionError`` when the spec cannot run the pair."""
        precision = self.spec.precision(wbits, abits, act_signed)
        weight_bytes = self.weight_bytes(desc, wbits)
        act_bytes = self.act_bytes(desc, abits)
        moved = weight_bytes + act_bytes
        level = self.spec.memory_level_for(moved)
        compute_s = desc.macs / precision.throughput
        memory_s = moved / level.bandwidth
        return Cost(
            latency_s=max(compute_s, memory_s) + self._overhead_s(desc, precision),
            energy_j=desc.macs * precision.energy_per_mac + moved * level.energy_per_byte,
            weight_bytes=weight_bytes,
            act_bytes=act_bytes,
            bops=desc.macs * (wbits or FLOAT_BITS) * (abits or FLOAT_BITS),
            bound="compute" if compute_s >= memory_s else "memory",
            native=precision.native,
        )

    def _overhead_s(self, desc: LayerDesc, precision: Precision) -> float:
        spec = self.spec
        seconds = spec.overhead(desc.op_type).time(desc.output_elems)
        if precision.is_float:
            return seconds
        quantize, dequantize = spec.overhead("QuantizeLinear"), spec.overhead("DequantizeLinear")
        seconds += quantize.time(desc.input_elems) + dequantize.time(desc.output_elems)
        if not precision.native:
            unpack = dequantize.per_element if precision.weight_unpack is None else precision.weight_unpack
            seconds += unpack * desc.weight_params
            if precision.emulated_abits is None:
                seconds += dequantize.time(desc.input_elems)
        return seconds

    def reference_cost(self, desc: LayerDesc) -> Cost:
        """Cost in the spec's reference configuration (float if the chip runs float, else w8a8),
        the denominator of relative budgets such as ``--max-size 0.25x``."""
        return self.layer_cost(desc, *self.spec.reference_pair)
