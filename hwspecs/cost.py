"""The cost model: a roofline per layer over plain layer descriptors (no ONNX in here).

Why a roofline: a layer either waits on its multipliers or on memory, and which one it is decides
whether fewer bits help.  Lower bits speed up a compute-bound layer only on a chip that computes
faster at lower bits (BitFusion, BISMO, VNNI int8), and a memory-bound layer (depthwise convs,
small-batch MatMuls) only through the bytes it moves — HAQ's observation that edge and cloud
accelerators want different policies falls out of exactly this.

Per layer, for weight bits ``w`` and activation bits ``a`` (``None`` = float), priced as mpqc's
lowering emits it (``passes/lower/lower_qdq.py``):

* ``latency = max(MACs / rate(w, a), bytes / bandwidth(level)) + overheads``, where ``rate`` is the
  pair's throughput (its ``depthwise_throughput`` for a depthwise conv) and ``level`` is the nearest
  memory level the layer's working set (weights + input + output) fits in.
* A recurrent layer (LSTM, GRU: ``LayerDesc.steps``) is that roofline over its input projection,
  one GEMM over the whole sequence, plus one small roofline per step for its recurrence: each step
  waits for the previous state and reads the whole recurrence weight of its direction again, from
  the level that weight fits in, in the form the kernel reads it (float for a float kernel, also
  behind a DequantizeLinear; int8 for DynamicQuantizeLSTM). The op's fixed overhead is paid per
  step (its kernels are dispatched once per step), its per-element one per output element (the
  gates' elementwise work).
* Overheads: the op's own fixed/per-element cost; for a quantized input, a QuantizeLinear (after a
  float Clip when the grid is narrower than its container: 5-7-bit activations) unless the input
  comes straight from another integer layer (``LayerDesc.input_from_layer``), and a DequantizeLinear
  of it when the kernel that runs is a float one; for an integer kernel, a DequantizeLinear of its
  output unless only integer layers read it (``output_to_layers``).  The island assumption at a
  boundary: a layer whose neighbours stay float pays for both conversions.  A uint8 input also pays
  for the data-movement ops right before it (``LayerDesc.input_ops``) running on uint8 instead of
  float (the spec's ``MaxPool(uint8)``, ``Transpose(nhwc_uint8)`` overheads; see
  ``_uint8_extra_s``).
* An integer kernel that runs in another layout (``spec.integer_layout``: onnxruntime's QLinearConv
  is NHWC) converts its input and output at the boundaries of a run of such layers.
* An integer pair of an op without an integer instruction in the spec's op table (HAGO's question:
  onnxruntime has no integer LSTM) runs as an emulated pair: the float kernel behind
  DequantizeLinear.
* An *emulated* pair (stored low-bit, computed in a wider type) unpacks its weights on every run:
  a DequantizeLinear node, ``weight_unpack`` per weight element (per op type where the spec says
  ``weight_unpack_ops``) (and its int32 bias's DequantizeLinear
  when the kernel is float).
* The activations after the layer (``LayerDesc.epilogue``) are free when the kernel that runs fuses
  them (``spec.fused_activations`` per kernel kind: float, emulated — a float kernel behind a weight
  DequantizeLinear, which onnxruntime runs in plain NCHW — and integer), else they cost their own
  op's overhead per output element.
* A table lookup (Gather) moves the rows it reads, not the table: a float or integer table costs its
  output; an emulated one (4/2-bit on onnxruntime) is dequantized whole, on every run (the spec's
  ``DequantizeLinear(int4)`` overhead per table element, if it has one), unless a packed kernel
  (GatherBlockQuantized) gathers it: then the spec's overhead of that op per gathered element.
* A dynamic range (``dynamic``: the spec's ``w<W>adyn`` entry, onnxruntime's DynamicQuantizeMatMul)
  measures and quantizes the float input on every run (the spec's ``DynamicQuantizeLinear``
  overhead per input element, even inside a run of integer layers) and returns float: no
  DequantizeLinear after it.
* A packed kernel (``CostModel.kernel``'s ``packed_kernel``: MatMulNBits) reads the stored low-bit
  weight itself: the float rate on the packed bytes, no per-run unpack, the input's
  Quantize/DequantizeLinear as for any float kernel behind a quantized input.
* ``energy = MACs · energy_per_mac(w, a) + bytes · energy_per_byte(level)`` (conversions ignored).
* bytes are *stored* bytes (``Cost.weight_bytes``, ``act_bytes``): weights in the ONNX container the
  lowering writes (INT2, INT4, INT8, INT16; 3-bit lives in INT4, etc., DESIGN.md) rounded up per
  tensor, plus one float32 scale per output channel, plus the bias (float32 or int32: 4 bytes each);
  activations likewise per element.  The roofline moves the same bytes, except on a chip that packs
  operands at exactly their bit-width (``spec.packed_operands``: bit-serial BISMO keeps 6-bit values
  as 6 bit-planes).
* ``BOPs = MACs · w · a`` with float counted as 32 × 32.

Everything is additive over layers, which the ILP/knapsack strategies rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Literal

from mpqc.core.bits import FLOAT_BITS
from mpqc.hwspecs.spec import HardwareSpec, Precision

CONTAINER_BITS = (2, 4, 8, 16, 32)
"""ONNX tensor element widths a quantized value is stored in (INT2/INT4/INT8/INT16, float32)."""
SCALE_BYTES = 4
"""Per-channel scales are float32; symmetric weights store no zero point."""
BIAS_BYTES = 4


def container_bits(bits: int | None) -> int:
    """Bits one element occupies in the written model: the smallest ONNX type holding ``bits``."""
    if bits is None:
        return FLOAT_BITS
    return next(c for c in CONTAINER_BITS if c >= bits)


def tensor_bytes(elements: int, bits: int | None) -> int:
    """Stored bytes of one tensor, rounded up as packed sub-byte tensors are."""
    return math.ceil(elements * container_bits(bits) / 8)


@dataclass(frozen=True)
class LayerDesc:
    """What the cost model needs to know about one quantizable layer, and nothing about ONNX.

    ``macs`` counts multiply-accumulates for one inference; ``*_elems`` are element counts of the
    layer's (first) activation input and its output.  The shape facts are optional: HAQ's agent
    state uses them and ``c_out`` sets the number of per-channel scales (one per tensor when
    unknown).
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
    epilogue: tuple[str, ...] = ()
    """Op types of the activations that follow the layer on its output (Relu, HardSwish...)."""
    input_from_layer: bool = False
    """The activation input comes from another quantizable layer through ops that stay integer
    (Relu, MaxPool, Concat...): in a run of integer layers it arrives already quantized."""
    output_to_layers: bool = False
    """Only quantizable layers (through integer-preserving ops) read the output."""
    input_ops: tuple[str, ...] = ()
    """Data-movement ops (MaxPool, Reshape...) right before the activation input, read only by this
    layer: onnxruntime moves a uint8 QuantizeLinear above them (QDQ propagation), so they run on
    uint8."""
    steps: int = 0
    """A recurrent layer's sequential steps (sequence length times directions): each waits for the
    previous step's state (0: not recurrent)."""
    step_weights: int = 0
    """Elements of the recurrence weight one step reads (one direction's R)."""
    recurrent_macs: int = 0
    """The part of ``macs`` the steps compute (the state times the recurrence weight)."""

    @property
    def lookup(self) -> bool:
        """A table lookup (Gather): it reads rows of its weight and multiplies nothing."""
        return self.op_type == "Gather"

    def __post_init__(self) -> None:
        for field_name in (
            "macs",
            "weight_params",
            "input_elems",
            "output_elems",
            "bias_params",
            "steps",
            "step_weights",
            "recurrent_macs",
        ):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"LayerDesc {self.name!r}: {field_name} must be a non-negative int, "
                    f"got {value!r}"
                )
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
        """Stored bytes of the layer's weights (in their ONNX container), per-channel scales and
        bias."""
        scales = 0 if wbits is None else SCALE_BYTES * (desc.c_out or 1)
        return tensor_bytes(desc.weight_params, wbits) + scales + BIAS_BYTES * desc.bias_params

    def act_bytes(self, desc: LayerDesc, abits: int | None) -> int:
        """Bytes of the layer's input and output activations at ``abits`` (float: 4 bytes each)."""
        return tensor_bytes(desc.input_elems, abits) + tensor_bytes(desc.output_elems, abits)

    def layer_cost(
        self,
        desc: LayerDesc,
        wbits: int | None,
        abits: int | None,
        *,
        act_signed: bool = False,
        packed_kernel: str | None = None,
        dynamic: bool = False,
    ) -> Cost:
        """Cost of ``desc`` at (``wbits``, ``abits``); ``None`` means float; ``packed_kernel``,
        ``dynamic``: see ``kernel``.  Raises ``UnsupportedPrecisionError`` when the spec cannot run
        the pair."""
        precision = self.kernel(
            desc, wbits, abits, act_signed=act_signed, packed_kernel=packed_kernel, dynamic=dynamic
        )
        weight_bytes = self.weight_bytes(desc, wbits)
        act_bytes = self.act_bytes(desc, abits)
        moved = self.moved_bytes(desc, wbits, abits)
        level = self.spec.memory_level_for(moved)
        compute_s = (desc.macs - desc.recurrent_macs) / precision.rate(desc.depthwise)
        memory_s = moved / level.bandwidth
        return Cost(
            latency_s=max(compute_s, memory_s)
            + self._recurrence_s(desc, precision)
            + self._overhead_s(desc, precision),
            energy_j=desc.macs * precision.energy_per_mac + moved * level.energy_per_byte,
            weight_bytes=weight_bytes,
            act_bytes=act_bytes,
            bops=desc.macs * (wbits or FLOAT_BITS) * (abits or FLOAT_BITS),
            bound="compute" if compute_s >= memory_s else "memory",
            native=precision.native,
        )

    def kernel(
        self,
        desc: LayerDesc,
        wbits: int | None,
        abits: int | None,
        *,
        act_signed: bool = False,
        packed_kernel: str | None = None,
        dynamic: bool = False,
    ) -> Precision:
        """The pair whose kernel ``layer_cost`` prices for ``desc`` at (``wbits``, ``abits``, with
        a range measured per run where ``dynamic``): its
        ``kernel_kind`` says float, emulated (a float kernel behind DequantizeLinear), packed or
        integer.  ``packed_kernel`` names the onnxruntime kernel that reads the stored low-bit
        weight itself where the lowering emits one (``Precision.packed_kernel``): a MatMulNBits
        runs at the float rate (on the packed bytes) with no per-run unpack; a
        GatherBlockQuantized costs its ``overheads`` entry per gathered element; a dynamic pair's
        own kernel (DynamicQuantizeLSTM, for an op the op table gives no integer instruction)
        computes at the pair's integer rate and unpacks nothing."""
        precision = self.spec.precision(wbits, abits, act_signed, dynamic)
        if packed_kernel is not None and precision.dynamic:
            return replace(precision, packed_kernel=packed_kernel)
        precision = self._kernel_for(desc, precision)
        if packed_kernel is None or precision.is_float:
            return precision
        floating = self.spec.precision(None, None) if self.spec.runs_float else precision
        return replace(
            precision,
            throughput=floating.throughput,
            depthwise_throughput=floating.depthwise_throughput,
            weight_unpack=0.0,
            weight_unpack_ops=MappingProxyType({}),
            packed_kernel=packed_kernel,
        )

    def _kernel_for(self, desc: LayerDesc, precision: Precision) -> Precision:
        """The pair as this op runs it: an integer pair of an op the spec's op table gives no
        integer instruction (an LSTM, a ConvTranspose on onnxruntime's CPU provider) runs the float
        kernel behind DequantizeLinear, at the float rate, its weights dequantized every run."""
        spec = self.spec
        if (
            desc.lookup
            or not spec.ops
            or not precision.integer_kernel
            or spec.runs_integer(desc.op_type)
            or not spec.runs_float
        ):
            return precision
        floating = spec.precision(None, None)
        return replace(
            precision,
            throughput=floating.throughput,
            depthwise_throughput=floating.depthwise_throughput,
            emulated_as=floating.key,
            emulated_abits=None,
            weight_unpack=None,
            weight_unpack_ops=MappingProxyType({}),
        )

    def _recurrence_s(self, desc: LayerDesc, precision: Precision) -> float:
        """A recurrent layer's steps: each a roofline of its share of ``recurrent_macs`` and of
        reading one direction's recurrence weight as the kernel reads it (see the module
        docstring)."""
        if not desc.steps:
            return 0.0
        read_bits = precision.wbits if precision.integer_kernel else None
        step_bytes = tensor_bytes(desc.step_weights, read_bits)
        bandwidth = self.spec.memory_level_for(step_bytes).bandwidth
        step_macs = desc.recurrent_macs / desc.steps
        return desc.steps * max(step_macs / precision.rate(False), step_bytes / bandwidth)

    def moved_bytes(self, desc: LayerDesc, wbits: int | None, abits: int | None) -> int:
        """Bytes one run moves: all weights and activations (at exactly their bits on a chip that
        packs operands), but only the gathered rows of a table."""
        if desc.lookup:
            return 2 * tensor_bytes(desc.output_elems, wbits)
        weight_bytes = self.weight_bytes(desc, wbits)
        if self.spec.packed_operands and wbits is not None and abits is not None:
            weights = (
                math.ceil(desc.weight_params * wbits / 8)
                + weight_bytes
                - tensor_bytes(desc.weight_params, wbits)
            )
            return weights + math.ceil((desc.input_elems + desc.output_elems) * abits / 8)
        return weight_bytes + self.act_bytes(desc, abits)

    def _overhead_s(self, desc: LayerDesc, precision: Precision) -> float:
        own = self.spec.overhead(desc.op_type)  # a recurrent layer dispatches once per step
        seconds = own.fixed * max(desc.steps, 1) + own.per_element * desc.output_elems
        if desc.lookup:
            return seconds + self._lookup_s(desc, precision)
        seconds += sum(
            self.spec.overhead(op).time(desc.output_elems)
            for op in desc.epilogue
            if not self.spec.fuses(precision.kernel_kind, op)
        )
        if precision.is_float:
            return seconds
        return (
            seconds
            + self._input_s(desc, precision)
            + self._output_s(desc, precision)
            + self._weights_s(desc, precision)
        )

    def _input_s(self, desc: LayerDesc, precision: Precision) -> float:
        """Getting the activation in: Clip + QuantizeLinear (none inside a run of integer layers),
        the data-movement ops before it on uint8, and a DequantizeLinear when the kernel is
        float."""
        spec = self.spec
        if precision.dynamic:
            return spec.overhead("DynamicQuantizeLinear").time(desc.input_elems)
        seconds = 0.0
        if not (precision.integer_kernel and desc.input_from_layer):
            seconds += spec.overhead("QuantizeLinear").time(desc.input_elems)
            if precision.abits is not None and container_bits(precision.abits) > precision.abits:
                seconds += spec.overhead("Clip").time(desc.input_elems)
        if precision.abits is not None and container_bits(precision.abits) == 8:
            layout = "nhwc_uint8" if precision.integer_kernel else "uint8"
            seconds += sum(
                self._uint8_extra_s(op, layout, desc.input_elems) for op in desc.input_ops
            )
        if not precision.integer_kernel:
            seconds += spec.overhead("DequantizeLinear").time(desc.input_elems)
        elif desc.op_type in spec.integer_layout and not desc.input_from_layer:
            seconds += spec.overhead(spec.integer_layout[desc.op_type]).time(desc.input_elems)
        return seconds

    def _output_s(self, desc: LayerDesc, precision: Precision) -> float:
        """Getting an integer kernel's output out: back to the graph's layout and a
        DequantizeLinear, unless only integer layers read it."""
        if not precision.integer_kernel or precision.dynamic or desc.output_to_layers:
            return 0.0
        seconds = self.spec.overhead("DequantizeLinear").time(desc.output_elems)
        if desc.op_type in self.spec.integer_layout:
            seconds += self.spec.overhead(self.spec.integer_layout[desc.op_type]).time(
                desc.output_elems
            )
        return seconds

    def _weights_s(self, desc: LayerDesc, precision: Precision) -> float:
        """An emulated pair's weight (and, for a float kernel, int32 bias) DequantizeLinear, every
        run."""
        if precision.native or precision.packed_kernel is not None:
            return 0.0
        dequantize = self.spec.overhead("DequantizeLinear")
        seconds = dequantize.fixed + self._unpack_s(precision, desc.op_type) * desc.weight_params
        if desc.bias_params and not precision.integer_kernel:
            seconds += dequantize.time(desc.bias_params)
        return seconds

    def _uint8_extra_s(self, op: str, layout: str, elements: int) -> float:
        """What running ``op`` on the quantized tensor costs over running it in float (already in
        the model's fixed part).  Next to a float kernel it runs on uint8 in NCHW (``op(uint8)``:
        MaxPool is a slow generic loop there); inside an integer kernel's region onnxruntime works
        in NHWC and folds the layout change into it (``op(nhwc_uint8)``: a channel shuffle's 5-D
        Transpose is slow there).  Zero when the spec has no such entry."""
        integer = self.spec.overheads.get(f"{op}({layout})")
        if integer is None:
            return 0.0
        return integer.time(elements) - self.spec.overhead(op).time(elements)

    def _unpack_s(self, precision: Precision, op_type: str) -> float:
        """Per weight element: the pair's unpack, else the spec's DequantizeLinear in front of this
        op (``DequantizeLinear(LSTM)``: a float LSTM repacks weights that are not constants on
        every run), else DequantizeLinear's."""
        unpack = precision.unpack(op_type)
        if unpack is not None:
            return unpack
        dequantize = self.spec.overhead("DequantizeLinear")
        return self.spec.overheads.get(f"DequantizeLinear({op_type})", dequantize).per_element

    def _lookup_s(self, desc: LayerDesc, precision: Precision) -> float:
        """A quantized table: integer rows are gathered then dequantized (and scaled per row); an
        emulated table is dequantized whole before the lookup, on every run."""
        if precision.is_float:
            return 0.0
        dequantize = self.spec.overhead("DequantizeLinear")
        if precision.packed_kernel is not None:
            return self.spec.overhead(precision.packed_kernel).time(desc.output_elems)
        if precision.native:
            return dequantize.time(desc.output_elems) + self.spec.overhead("Mul").time(
                desc.output_elems
            )
        table = self.spec.overheads.get(
            f"DequantizeLinear(int{container_bits(precision.wbits)})", dequantize
        )
        return table.time(desc.weight_params)

    def reference_cost(self, desc: LayerDesc) -> Cost:
        """Cost in the spec's reference configuration (float if the chip runs float, else w8a8),
        the denominator of relative budgets such as ``--max-size 0.25x``."""
        return self.layer_cost(desc, *self.spec.reference_pair)
