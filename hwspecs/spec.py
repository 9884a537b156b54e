"""The in-memory hardware spec: what a target runs natively, what it emulates, and at what cost.

A ``HardwareSpec`` is the validated, unit-converted form of a spec YAML (see ``loader``).  It
answers the questions the rest of the compiler asks of a chip:

* which (weight bits, activation bits) pairs can run, and which of them run *natively* versus
  *emulated* in a wider type (onnxruntime's CPU provider stores 4-bit weights but computes in 8-bit
  or float, so a 4-bit weight saves bytes, not MACs);
* the throughput and energy per MAC of a pair, either listed explicitly (CPUs, SiLago) or derived
  from an anchor pair by the bit-flexible rule ``throughput ∝ 1/(w·a)`` (BitFusion, BISMO, per
  HAQ/MOHAQ);
* memory levels (capacity, bandwidth, energy per byte), per-op overheads, and which ONNX ops have
  integer instructions (HAGO's op-level description), which the lowering pass uses to place Q/DQ.

Everything is frozen: a spec is shared by passes and worker processes and must not change under
them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mpqc.core.bits import Bits
from mpqc.hwspecs.errors import UnsupportedPrecisionError


def precision_key(
    wbits: int | None, abits: int | None, act_signed: bool = False, dynamic: bool = False
) -> str:
    """The spec key of a pair: ``float`` or ``w<W>a<A>`` (``_signed`` for signed activations),
    ``w<W>adyn`` for 8-bit activations whose range is measured on every run."""
    if wbits is None and abits is None:
        return "float"
    if wbits is None or abits is None:
        raise UnsupportedPrecisionError(
            f"weight bits {wbits} with activation bits {abits}: "
            "give both as integers, or both None for float"
        )
    return str(Bits(wbits, abits, dynamic)) + ("_signed" if act_signed else "")


@dataclass(frozen=True)
class Precision:
    """Cost of one precision pair.  ``emulated_as`` names the pair whose kernel actually runs.

    For an emulated pair the loader has already filled ``throughput``/``energy_per_mac`` from the
    pair it is emulated as, so callers never chase the chain.  A spec overrides them when the
    emulated kernel is slower than the real one: onnxruntime runs the float Conv behind an unfused
    DequantizeLinear in plain NCHW, not in the NCHWc layout the float graph gets.
    """

    key: str
    wbits: int | None
    abits: int | None
    act_signed: bool
    throughput: float
    """Peak multiply-accumulates per second."""
    energy_per_mac: float
    """Joules per multiply-accumulate."""
    emulated_as: str | None = None
    emulated_abits: int | None = None
    """Activation bits of the kernel that really runs (None: float); tells whether activations need
    a DequantizeLinear before the kernel."""
    weight_unpack: float | None = None
    """Seconds per weight element an emulated pair spends unpacking stored weights on every run;
    None means the spec's DequantizeLinear per-element overhead."""
    weight_unpack_ops: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Per-op overrides of ``weight_unpack``: onnxruntime turns DequantizeLinear(int8) -> MatMul
    into MatMulNBits, which unpacks nothing per run, while a Conv still dequantizes and repacks its
    weight."""
    depthwise_throughput: float | None = None
    """Multiply-accumulates per second of depthwise convolutions (one input channel per group), when
    the kernel runs them far below ``throughput``: each weight is reused only across a k x k window,
    so SIMD GEMM kernels do not apply.  None: the same as ``throughput``."""
    packed_kernel: str | None = None
    """The onnxruntime kernel that reads the stored low-bit weight itself, when one runs the layer
    instead of a DequantizeLinear in front of a float kernel: ``MatMulNBits``, which computes at
    the float kernel's rate on the packed weight and unpacks nothing per run, or
    ``GatherBlockQuantized``, which dequantizes only the rows it gathers (set by
    ``CostModel.kernel``, never by a spec file)."""
    weight_grid_bits: int | None = None
    """The widest weight grid the pair's kernel computes exactly, when narrower than ``wbits``: x86
    CPUs without VNNI multiply u8 activations by s8 weights with ``vpmaddubsw``, which adds pairs of
    products into a saturating int16 (2·255·127 overflows), so 8-bit weights must stay on 7 bits."""
    dynamic: bool = False
    """The kernel measures its input's range on every run and quantizes it itself (onnxruntime's
    DynamicQuantizeMatMul: the spec's ``DynamicQuantizeLinear`` overhead per input element), and
    its output is float (no output quantizer to dequantize)."""

    @property
    def native(self) -> bool:
        return self.emulated_as is None

    @property
    def integer_kernel(self) -> bool:
        """Whether the kernel that runs is an integer one (native, or emulated in a wider integer
        pair)."""
        return not self.is_float and (self.native or self.emulated_abits is not None)

    def unpack(self, op_type: str) -> float | None:
        """Seconds per weight element a layer of ``op_type`` unpacks on every run (None: the spec's
        DequantizeLinear rate)."""
        return self.weight_unpack_ops.get(op_type, self.weight_unpack)

    @property
    def kernel_kind(self) -> str:
        """'float' (the float graph's own kernel), 'emulated' (a float kernel behind a weight
        DequantizeLinear), 'packed' (``packed_kernel``) or 'integer': what
        ``HardwareSpec.fused_activations`` is keyed by."""
        if self.integer_kernel:
            return "integer"
        if self.packed_kernel is not None:
            return "packed"
        return "float" if self.native else "emulated"

    def rate(self, depthwise: bool) -> float:
        """MACs per second for a layer of this kind."""
        return (
            self.depthwise_throughput
            if depthwise and self.depthwise_throughput is not None
            else self.throughput
        )

    @property
    def is_float(self) -> bool:
        return self.wbits is None


@dataclass(frozen=True)
class BitScaling:
    """Bit-flexible rule: a pair (w, a) runs ``(W·A)/(w·a)`` times faster than the anchor (W, A).

    This is the cycle model of bit-serial BISMO (cycles ∝ w·a, HAQ §4) and of BitFusion's 2-bit
    bricks (MOHAQ's s = 256/(w·a) against 16×16), capped at ``max_speedup`` (MOHAQ caps BitFusion at
    64).  Energy per MAC scales the same way: the work is (w·a)/(W·A) of the anchor's bit-level
    operations.
    """

    anchor: Precision
    max_speedup: float = math.inf

    def derive(self, wbits: int, abits: int) -> Precision:
        anchor_work = self.anchor.wbits * self.anchor.abits  # type: ignore[operator]
        speedup = min(self.max_speedup, anchor_work / (wbits * abits))
        return Precision(
            key=precision_key(wbits, abits),
            wbits=wbits,
            abits=abits,
            act_signed=False,
            throughput=self.anchor.throughput * speedup,
            energy_per_mac=self.anchor.energy_per_mac * (wbits * abits) / anchor_work,
        )


@dataclass(frozen=True)
class MemoryLevel:
    name: str
    capacity: float
    """Bytes; ``math.inf`` for the last, unbounded level."""
    bandwidth: float
    """Bytes per second."""
    energy_per_byte: float
    """Joules per byte moved."""


@dataclass(frozen=True)
class Overhead:
    """Time an op costs besides its MACs: a fixed launch cost plus a per-output-element cost."""

    fixed: float = 0.0
    per_element: float = 0.0

    def time(self, elements: int) -> float:
        return self.fixed + self.per_element * elements


NO_OVERHEAD = Overhead()

INTEGER_DTYPES = frozenset(
    {"int2", "uint2", "int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "uint32"}
)


@dataclass(frozen=True)
class Instruction:
    """One HAGO-style instruction of an op: input element types -> output element type."""

    inputs: tuple[str, ...]
    output: str

    @property
    def is_integer(self) -> bool:
        return all(t in INTEGER_DTYPES for t in self.inputs)

    def __str__(self) -> str:
        return f"{','.join(self.inputs)} -> {self.output}"


@dataclass(frozen=True)
class HardwareSpec:
    """A validated hardware spec (build one with ``mpqc.hwspecs.load``)."""

    name: str
    description: str
    source: str
    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    precisions: Mapping[str, Precision]
    memory: tuple[MemoryLevel, ...]
    """Nearest (smallest) level first; the last one may be unbounded."""
    overheads: Mapping[str, Overhead] = field(default_factory=lambda: MappingProxyType({}))
    ops: Mapping[str, tuple[Instruction, ...]] = field(default_factory=lambda: MappingProxyType({}))
    bit_scaling: BitScaling | None = None
    threads: int | None = None
    packed_operands: bool = False
    """Operands are stored and moved at exactly their bit-width (bit-serial or bit-fused datapaths),
    not in the ONNX container of the written model (INT8 for 5-7 bits, INT4 for 3)."""
    integer_layout: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Op type -> the op that converts to and from the layout its integer kernel runs in
    (onnxruntime's QLinearConv is NHWC: a Transpose in and out at the boundaries of a run of integer
    convs)."""
    session_overhead: float = 0.0
    """Seconds one inference call costs besides its ops (the runtime's own bookkeeping)."""
    fused_activations: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Kernel kind ('float', 'emulated', 'integer'; see ``Precision.kernel_kind``) -> activation op
    types a kernel of that kind applies in its own output loop, at no cost; 'emulated' defaults to
    'float'.  onnxruntime fuses Relu, Clip, Sigmoid, HardSwish... into a float NCHWc Conv, not
    HardSwish into the plain-NCHW Conv behind a weight DequantizeLinear; an integer kernel absorbs
    only Relu (its output quantizer clips at zero), so the others run as separate float ops on the
    dequantized output."""

    # -- precisions -------------------------------------------------------------------------------

    @property
    def runs_float(self) -> bool:
        return "float" in self.precisions

    @property
    def reference_pair(self) -> tuple[int | None, int | None]:
        """The reference configuration budgets like ``0.25x`` are relative to (DESIGN.md):
        float where the chip runs float, otherwise uniform 8-bit."""
        return (None, None) if self.runs_float else (8, 8)

    def precision(
        self,
        wbits: int | None,
        abits: int | None,
        act_signed: bool = False,
        dynamic: bool = False,
    ) -> Precision:
        """The cost entry of a pair, or ``UnsupportedPrecisionError`` naming what the chip runs.

        A ``_signed`` entry is used when ``act_signed`` and the spec has one; a spec without it does
        not distinguish signedness (accelerators), so the plain entry answers. A dynamic range
        (``w8adyn``) is only what the spec lists under that key.
        """
        found = self._lookup(wbits, abits, act_signed, dynamic)
        if found is None:
            supported = [precision_key(w, a) for w, a in self.supported_pairs()] + (
                ["float"] if self.runs_float else []
            )
            raise UnsupportedPrecisionError(
                f"spec {self.name!r} cannot run "
                f"{precision_key(wbits, abits, act_signed, dynamic)}; "
                f"supported: {', '.join(supported)}"
            )
        return found

    def supports(self, wbits: int | None, abits: int | None, dynamic: bool = False) -> bool:
        return self._lookup(wbits, abits, False, dynamic) is not None

    def _lookup(
        self, wbits: int | None, abits: int | None, act_signed: bool, dynamic: bool = False
    ) -> Precision | None:
        if dynamic:
            return self.precisions.get(precision_key(wbits, abits, dynamic=True))
        key = precision_key(wbits, abits, act_signed)
        plain = precision_key(wbits, abits)
        if key in self.precisions or plain in self.precisions:
            return self.precisions.get(key) or self.precisions[plain]
        if (
            self.bit_scaling is not None
            and wbits is not None
            and abits is not None
            and wbits in self.weight_bits
            and abits in self.act_bits
        ):
            return self.bit_scaling.derive(wbits, abits)
        return None

    def supported_pairs(
        self,
        wbits_allowed: list[int] | tuple[int, ...] | None = None,
        abits_allowed: list[int] | tuple[int, ...] | None = None,
    ) -> list[tuple[int, int]]:
        """Integer (w, a) pairs the chip runs, within the user's lists, high precision first.

        Order: by ``w·a`` (the BOPs factor) descending, then activation bits, then weight bits — so
        the first entry is the safest choice and strategies that walk down a list (HAQ, AMP) go
        cheaper.  Float is not a pair here; ask ``runs_float``.
        """
        pairs = [
            (w, a)
            for w in self.weight_bits
            for a in self.act_bits
            if (wbits_allowed is None or w in wbits_allowed)
            and (abits_allowed is None or a in abits_allowed)
            and self.supports(w, a)
        ]
        return sorted(pairs, key=lambda p: (-p[0] * p[1], -p[1], -p[0]))

    def dynamic_pairs(
        self,
        wbits_allowed: list[int] | tuple[int, ...] | None = None,
        abits_allowed: list[int] | tuple[int, ...] | None = None,
    ) -> list[Bits]:
        """The dynamic-range choices the chip runs (``w8adyn``), within the user's lists (the
        activation list must allow their 8 bits), widest weights first."""
        return sorted(
            (
                Bits(p.wbits, p.abits, True)
                for p in self.precisions.values()
                if p.dynamic
                and p.wbits is not None
                and p.abits is not None
                and (wbits_allowed is None or p.wbits in wbits_allowed)
                and (abits_allowed is None or p.abits in abits_allowed)
            ),
            reverse=True,
        )

    # -- memory, overheads, ops --------------------------------------------------------------------

    def memory_level_for(self, working_set_bytes: float) -> MemoryLevel:
        """The nearest level the working set fits in; the farthest level when it fits nowhere."""
        for level in self.memory:
            if working_set_bytes <= level.capacity:
                return level
        return self.memory[-1]

    def fuses(self, kernel_kind: str, op_type: str) -> bool:
        """Does a ``kernel_kind`` kernel ('float', 'emulated', 'integer') apply activation
        ``op_type`` for free?"""
        fallback = (
            self.fused_activations.get("float", frozenset())
            if kernel_kind == "emulated"
            else frozenset()
        )
        return op_type in self.fused_activations.get(kernel_kind, fallback)

    def overhead(self, op_type: str) -> Overhead:
        return self.overheads.get(op_type, self.overheads.get("default", NO_OVERHEAD))

    def instructions(self, op_type: str) -> tuple[Instruction, ...]:
        return self.ops.get(op_type, ())

    def runs_integer(self, op_type: str) -> bool:
        """HAGO's question: does the target have an integer instruction for this op?"""
        return any(i.is_integer for i in self.instructions(op_type))
