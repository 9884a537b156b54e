"""The lowering plan: for one layer and one choice, everything the written file will hold.

Lowering, the size count, the evaluator and the cost pass all need the same answers — which
container the weight is stored in, which scale form dequantizes it, whether the bias becomes int32,
where activation quantizers sit, which onnxruntime kernel runs the layer — and they are only exact
if they get them from one place. ``plan_layer`` is that place: a pure function of the layer's facts
(``LayerFacts``, read once from the IR), the choice (weight bits, activation bits), the target and
the layout options. ``lower-qdq`` emits the plan, ``stored_bytes`` sums it, the evaluator simulates
it and the cost pass prices it.

Weight forms (``WeightForm``):

- ``per-channel``: DequantizeLinear with one scale and one zero point per output channel;
- ``unit-scale-mul``: INT2 containers dequantize at scale 1, then a Mul by the per-channel scales.
  onnxruntime's QDQ fusion turns DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear into
  QLinearConv/QLinearMatMul without checking the weight type, and the session then fails to load
  because those kernels take no INT2 weights; the Mul hides the pattern, with the same numbers;
- ``per-block``: DequantizeLinear's blocked layout (opset 21) along K of a MatMul/Gemm, for 2- and
  4-bit containers only: onnxruntime fuses a blocked INT8 DequantizeLinear behind quantized
  activations into MatMulIntegerToFloat and ignores the blocks (wrong outputs), and an 8-bit grid
  gains little from blocks that cost 4 bytes each;
- ``matmul-nbits``: onnxruntime's ``com.microsoft.MatMulNBits`` for a 2-D weight with K >=
  ``NBITS_MIN_K``, a MatMul or a plain Gemm whose bias becomes the op's bias input: in a 2/4/8-bit
  container under ``weight_only``, and in mixed mode for a 2/4-bit container on a target without
  an integer kernel for such weights (onnxruntime's CPU provider; ``_packed_kernel``). There it
  replaces a DequantizeLinear that unpacks the weight on every run; a quantized input keeps its
  quantizer in front of the op (the numbers of the chosen activation grid), which then rounds A
  to int8 per block at accuracy level 4 like any other input. The block never runs past K
  rounded up to a power of two (``_fitted_block``);
- ``gather-block-quantized``: onnxruntime's ``com.microsoft.GatherBlockQuantized`` for a 2-D table
  in a 4-bit container (``weight_only``, and mixed mode on the same targets): only the rows looked
  up are dequantized, where a DequantizeLinear in front of the Gather dequantizes the whole table
  on every run;
- ``gather-rows``: an 8-bit table read by one Gather gathers its int8 rows, then scales them
  (DequantizeLinear at scale 1, Mul by the gathered row scales): a DequantizeLinear in front of the
  Gather would turn the whole table back into floats on every run;
- ``matmul-integer``: under dynamic activations (``w8adyn``), a 2-D MatMul/plain-Gemm weight as
  int8 [K, N] with a float scale per column, read by ``MatMulInteger`` behind the input's
  ``DynamicQuantizeLinear`` and scaled after it (``Cast``, ``Mul`` by input scale x column scales,
  the Gemm's bias as an ``Add``): ``onnxruntime.quantization.quantize_dynamic``'s form, which
  onnxruntime fuses into its ``DynamicQuantizeMatMul`` integer kernel;
- ``dynamic-lstm``: under dynamic activations (``w8adyn``), an LSTM's W and R as int8 [D, K, 4H]
  (transposed) with a scale per direction and gate column, read by onnxruntime's
  ``com.microsoft.DynamicQuantizeLSTM``: ``quantize_dynamic``'s LSTM. The kernel quantizes its
  input sequence and every step's hidden state to uint8 on the run, and its int8 recurrence
  weight is a quarter of the float one that a float or DequantizeLinear'd LSTM streams from memory
  on every step (bench/RESULTS.md §7c measures it against both).

Bias (``BiasForm``): a Conv/Gemm's constant 1-D bias becomes int32 at s_x·s_w when the weight is
dequantized per channel and its input arrives from a DequantizeLinear with one scale (its own input
quantizer, or the output quantizer of the layer before it): that is what onnxruntime's
QLinearConv/QGemm fusion needs, and where nothing fuses onnxruntime's BiasQuantization would make
the same int32 itself without a range check. Blocked, unit-scale and MatMulNBits weights keep a
float bias: there is no per-channel weight scale to put it on. The numbers are ``int32_bias``.

Kernels (``Kernel``): what onnxruntime's CPU provider runs after its own graph optimizations — an
integer kernel (QLinearConv, QLinearMatMul, QGemm) where 8-bit containers on both sides get an
output quantizer; MatMulNBits where mpqc emits it, and also where onnxruntime fuses a
DequantizeLinear -> MatMul itself (float or 16-bit activations, accuracy level 4: the evaluator
simulates its int8 rounding of a 16-bit input, and the graph as written behind float ones, see
``evaluator/graph.py``); GatherBlockQuantized; a Gather of int8 rows;
DynamicQuantizeMatMul for ``matmul-integer``; DynamicQuantizeLSTM for ``dynamic-lstm``; otherwise
the float kernel behind a weight DequantizeLinear, which saves bytes, not time (an LSTM or GRU at
static 8-bit activations: onnxruntime has no such kernel).

Activations: a quantizer on the layer's input (static, per tensor, in ``activation_grid``'s
container) unless activations stay float (``weight_only``); for
8-bit containers on both sides (``fusable``) a quantizer on the output too, on ``output_target``.
A dynamic quantizer (``dynamic``: uint8, its range measured on every run) exists for the layers
``dynamic_form`` names, with 8-bit weights (``matmul-integer``, the output stays float) or float
ones (``DynamicQuantizeLinear`` then ``DequantizeLinear``: how sensitivity analysis scores the
activation alone; for an LSTM that is its input sequence, not the hidden states the kernel also
rounds). A ``dynamic-lstm`` layer has no quantizer of its own: its kernel rounds its input.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np
import onnx_ir as ir

from mpqc.core.bits import DYNAMIC_BITS, FLOAT_BITS
from mpqc.ir.layers import Layer, constant_array
from mpqc.passes.lib.grid import activation_grid, weight_grid
from mpqc.passes.lib.layout import (
    DEFAULT_NBITS_BLOCK,
    NBITS_MIN_K,
    NBITS_WIDTHS,
    PER_CHANNEL,
    WeightLayout,
    kn_weight,
)
from mpqc.passes.lib.target import weight_grid_bits

__all__ = [
    "BiasForm",
    "Kernel",
    "LayerFacts",
    "LayerPlan",
    "WeightForm",
    "dynamic_form",
    "facts_of",
    "fusable",
    "int32_bias",
    "layer_plan",
    "plan_layer",
]


class WeightForm(enum.Enum):
    FLOAT = "float"
    PER_CHANNEL = "per-channel"
    UNIT_SCALE_MUL = "unit-scale-mul"
    PER_BLOCK = "per-block"
    MATMUL_NBITS = "matmul-nbits"
    GATHER_BLOCK_QUANTIZED = "gather-block-quantized"
    GATHER_ROWS = "gather-rows"
    MATMUL_INTEGER = "matmul-integer"
    DYNAMIC_LSTM = "dynamic-lstm"


class BiasForm(enum.Enum):
    FLOAT = "float"
    #: int32 at s_x·s_w when the layer's input arrives dequantized (see the module docstring).
    INT32 = "int32"


class Kernel(enum.Enum):
    """The onnxruntime CPU kernel that runs the lowered layer."""

    #: The float model's own kernel (float weights).
    FLOAT = "float"
    #: QLinearConv, QLinearMatMul/MatMulIntegerToFloat, QGemm: onnxruntime fuses the Q/DQ around it.
    INTEGER = "integer"
    #: A float kernel behind a weight DequantizeLinear: a size saving, not a speed-up.
    DEQUANTIZE_FLOAT = "dequantize-float"
    #: MatMulNBits, emitted by mpqc or fused by onnxruntime from DequantizeLinear -> MatMul.
    MATMUL_NBITS = "matmul-nbits"
    GATHER_BLOCK_QUANTIZED = "gather-block-quantized"
    #: A Gather of int8 rows, scaled after the lookup.
    GATHER_INT8 = "gather-int8"
    #: DynamicQuantizeMatMul, onnxruntime's fusion of DynamicQuantizeLinear -> MatMulInteger (or
    #: MatMulIntegerToFloat behind a DynamicQuantizeLinear that several layers share).
    DYNAMIC_INTEGER = "dynamic-integer"
    #: DynamicQuantizeLSTM (com.microsoft): int8 W and R, input and hidden state quantized per run.
    DYNAMIC_LSTM = "dynamic-lstm"


#: Ops whose Q/DQ pattern onnxruntime's CPU provider fuses into an integer kernel.
INTEGER_OPS = frozenset({"Conv", "MatMul", "Gemm"})
#: Containers whose blocked DequantizeLinear onnxruntime runs correctly (see the module docstring).
_BLOCKED_WIDTHS = (2, 4)
#: Weight forms that are onnxruntime contrib ops (domain com.microsoft).
CONTRIB_FORMS = frozenset(
    {WeightForm.MATMUL_NBITS, WeightForm.GATHER_BLOCK_QUANTIZED, WeightForm.DYNAMIC_LSTM}
)


def fusable(wbits: int, abits: int) -> bool:
    """8-bit containers on both operands: onnxruntime's CPU provider has integer kernels for them,
    so the layer gets an output quantizer too."""
    return 5 <= wbits <= 8 and 5 <= abits <= 8


@dataclasses.dataclass(frozen=True)
class LayerFacts:
    """What the plan needs to know about a layer, read once from the IR: plain data that pickles."""

    name: str
    op_type: str
    weight_shape: tuple[int, ...]
    #: [K, N] of a 2-D MatMul/Gemm weight; None otherwise.
    kn: tuple[int, int] | None
    #: A Gemm computing A @ B + bias over columns (what MatMulNBits with its bias input computes).
    plain_gemm: bool
    #: A Gemm whose weight is stored [N, K] (transB).
    trans_b: bool
    #: A table only this Gather reads.
    single_use_table: bool
    #: The shape of a Conv/Gemm's constant bias; None without one.
    bias_shape: tuple[int, ...] | None
    has_activation: bool
    #: An RNN: its recurrence weight is quantized with the input weight.
    recurrent: bool
    #: An LSTM onnxruntime's DynamicQuantizeLSTM runs: constant W and R, time-major layout.
    dynamic_lstm: bool = False


def _plain_gemm(layer: Layer) -> bool:
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


def facts_of(layer: Layer) -> LayerFacts:
    node, op = layer.node, layer.node.op_type
    weight = layer.weight_array()
    two_d = op in ("MatMul", "Gemm") and weight.ndim == 2
    bias = (
        constant_array(node.inputs[2]) if op in ("Conv", "Gemm") and len(node.inputs) > 2 else None
    )
    return LayerFacts(
        name=layer.name,
        op_type=op,
        weight_shape=tuple(weight.shape),
        kn=tuple(kn_weight(layer).shape) if two_d else None,  # type: ignore[arg-type]
        plain_gemm=op == "Gemm" and two_d and _plain_gemm(layer),
        trans_b=op == "Gemm" and bool(node.attributes.get_int("transB", 0)),
        single_use_table=op == "Gather" and len(layer.weight.uses()) == 1,
        bias_shape=None if bias is None else tuple(bias.shape),
        has_activation=layer.activation is not None,
        recurrent=bool(layer.other_weight_indices),
        dynamic_lstm=op == "LSTM"
        and bool(layer.other_weight_indices)
        and not node.attributes.get_int("layout", 0),
    )


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """Everything the lowered file holds for one layer at one choice (see the module docstring)."""

    name: str
    op_type: str
    #: The chosen weight bits (``mpqc.bits``' w; 32 = float).
    wbits: int
    #: The activation bits that apply: float under ``weight_only``.
    abits: int
    #: The grid the weights are rounded to: narrower than ``wbits`` where the target's integer
    #: kernel would saturate (``target.weight_grid_bits``).
    grid_bits: int
    form: WeightForm
    #: An RNN's recurrence weight, stored like its input weight (never blocked); None for others.
    recurrence_form: WeightForm | None
    #: Block size along ``layout.block_axis`` (per block, MatMulNBits, GatherBlockQuantized), or 0.
    block: int
    #: The weight's ONNX container (None: float).
    container: ir.DataType | None
    #: The accuracy_level of the MatMulNBits that runs the layer (``kernel``); None for others.
    accuracy_level: int | None
    #: The block of K that MatMulNBits reads A in (at accuracy level 4 it rounds A to int8 per
    #: block); None for other kernels.
    kernel_block: int | None
    bias: BiasForm | None
    #: The input quantizer's container (None: the input stays float); ``input_clip`` when its grid
    #: is narrower than the container (a float Clip before QuantizeLinear).
    input_quantizer: ir.DataType | None
    input_clip: bool
    #: A quantizer on ``output_target`` (an integer kernel's output).
    output_quantizer: bool
    kernel: Kernel
    #: The input quantizer's range is measured on every run (``DynamicQuantizeLinear``).
    dynamic: bool = False

    @property
    def quantized_weight(self) -> bool:
        return self.form is not WeightForm.FLOAT

    @property
    def int8_input_block(self) -> int | None:
        """The block of K in which the kernel rounds a quantized or emitted MatMulNBits' input to
        int8 (accuracy level 4), which the evaluator simulates; None otherwise (onnxruntime's own
        fusion behind float activations is not simulated, ``evaluator/graph.py`` says why)."""
        simulated = self.form is WeightForm.MATMUL_NBITS or self.abits != FLOAT_BITS
        if self.kernel is Kernel.MATMUL_NBITS and self.accuracy_level == 4 and simulated:
            return self.kernel_block
        return None


def _weight_form(
    facts: LayerFacts, grid_bits: int, layout: WeightLayout, packed_kernel: bool
) -> tuple[WeightForm, int]:
    """The weight's form and block size (``packed_kernel``: see ``_packed_kernel``)."""
    if grid_bits == FLOAT_BITS:
        return WeightForm.FLOAT, 0
    width = weight_grid(grid_bits).width
    op = facts.op_type
    # Weight-only asks for the contrib ops at every width; in mixed mode they replace a sub-8-bit
    # container that would otherwise sit behind a DequantizeLinear, dequantized on every run.
    contrib = layout.weight_only or (width < 8 and packed_kernel)
    if (
        contrib
        and facts.kn is not None
        and (op == "MatMul" or facts.plain_gemm)
        and facts.kn[0] >= NBITS_MIN_K
        and width in NBITS_WIDTHS
    ):
        block = layout.nbits_block if width == 2 else _fitted_block(layout.nbits_block, facts.kn[0])
        return WeightForm.MATMUL_NBITS, block
    if op == "Gather":
        shape = facts.weight_shape
        if contrib and len(shape) == 2 and shape[1] >= NBITS_MIN_K and width == 4:
            return WeightForm.GATHER_BLOCK_QUANTIZED, layout.nbits_block
        if width == 8 and facts.single_use_table:
            return WeightForm.GATHER_ROWS, 0
    if layout.block_size and op in ("MatMul", "Gemm") and width in _BLOCKED_WIDTHS:
        return WeightForm.PER_BLOCK, layout.block_size
    return (WeightForm.UNIT_SCALE_MUL if width == 2 else WeightForm.PER_CHANNEL), 0


def _fitted_block(block: int, k: int) -> int:
    """``block``, or a smaller power of two (at least ``NBITS_MIN_K``) that still covers ``k``: a
    block longer than K is padding, stored on every column. (Not for 2-bit containers: onnxruntime
    1.32's 2-bit kernel at accuracy level 4 does not round A in blocks of 16 the way its 4- and
    8-bit kernels do, tests/passes/lib/test_plan.py.)"""
    return min(block, max(NBITS_MIN_K, 1 << (k - 1).bit_length()))


def _packed_kernel(spec: Any, wbits: int) -> bool:
    """Whether sub-8-bit ``wbits`` weights run in onnxruntime's kernels that read packed low-bit
    weights (MatMulNBits, GatherBlockQuantized): on a target that computes such weights in no
    integer kernel of its own (the onnxruntime CPU specs), not on a chip that has one (BitFusion,
    BISMO, generic), whose QDQ graph states the pair, nor without a target (the portable QDQ
    form). A property of the weight bits alone, so a layer's weight has one form whatever its
    activations (the evaluator keeps one copy per grid)."""
    return spec is not None and not any(
        spec.supports(wbits, abits) and spec.precision(wbits, abits).native
        for abits in spec.act_bits
    )


def _fused_into_matmul_nbits(
    facts: LayerFacts, form: WeightForm, grid_bits: int, abits: int
) -> bool:
    """Whether onnxruntime itself rewrites the layer's DequantizeLinear -> MatMul/Gemm into
    MatMulNBits (at accuracy level 4, in the DequantizeLinear's blocks or 32 per channel): a 2-D
    weight in a 2/4/8-bit container behind a DequantizeLinear, a MatMul or a Gemm with alpha =
    beta = 1 and neither operand transposed (onnxruntime 1.32's DQMatMulToMatMulNBits; a
    unit-scale Mul in between hides the pattern), fed float activations or 16-bit ones (its QDQ
    integer fusions take 8-bit ones first). So a 16-bit input reaches such a MatMul rounded again
    to int8 per block of K: what the evaluator simulates and the cost pass prices."""
    return (
        form in (WeightForm.PER_CHANNEL, WeightForm.PER_BLOCK)
        and (abits == FLOAT_BITS or activation_grid(abits).width == 16)
        and facts.kn is not None
        and (facts.op_type == "MatMul" or (facts.plain_gemm and not facts.trans_b))
        and weight_grid(grid_bits).width in NBITS_WIDTHS
    )


def dynamic_form(facts: LayerFacts) -> bool:
    """Whether the layer has a dynamic-activation form: a MatMul or a plain Gemm (A @ B + bias)
    over a 2-D weight, or an LSTM DynamicQuantizeLSTM runs (``quantize_dynamic``'s layers)."""
    matmul = facts.kn is not None and (facts.op_type == "MatMul" or facts.plain_gemm)
    return (matmul or facts.dynamic_lstm) and facts.has_activation


def _dynamic_plan(facts: LayerFacts, wbits: int, spec: Any, layout: WeightLayout) -> LayerPlan:
    """The plan of ``facts``' layer at (``wbits``, dynamic 8-bit activations)."""
    if layout.weight_only or not dynamic_form(facts):
        raise ValueError(
            f"layer '{facts.name}': dynamic activations need a MatMul or plain Gemm with a 2-D "
            "weight, or a time-major LSTM with constant weights, outside weight-only mode"
        )
    grid_bits = weight_grid_bits(spec, wbits, DYNAMIC_BITS)
    if wbits != FLOAT_BITS and weight_grid(grid_bits).width != 8:
        raise ValueError(
            f"layer '{facts.name}': dynamic activations run with 8-bit weights (MatMulInteger, "
            f"DynamicQuantizeLSTM), not {wbits}-bit ones"
        )
    form, kernel = WeightForm.FLOAT, Kernel.FLOAT
    if wbits != FLOAT_BITS:
        lstm = facts.op_type == "LSTM"
        form = WeightForm.DYNAMIC_LSTM if lstm else WeightForm.MATMUL_INTEGER
        kernel = Kernel.DYNAMIC_LSTM if lstm else Kernel.DYNAMIC_INTEGER
    # DynamicQuantizeLSTM rounds its input itself; every other form reads a DynamicQuantizeLinear.
    own_quantizer = form is not WeightForm.DYNAMIC_LSTM
    return LayerPlan(
        name=facts.name,
        op_type=facts.op_type,
        wbits=wbits,
        abits=DYNAMIC_BITS,
        grid_bits=grid_bits,
        form=form,
        recurrence_form=form if facts.recurrent else None,
        block=0,
        container=None if form is WeightForm.FLOAT else weight_grid(grid_bits).container,
        accuracy_level=None,
        kernel_block=None,
        bias=None if facts.bias_shape is None else BiasForm.FLOAT,
        input_quantizer=activation_grid(DYNAMIC_BITS).container if own_quantizer else None,
        input_clip=False,
        output_quantizer=False,
        kernel=kernel,
        dynamic=True,
    )


def _kernel(facts: LayerFacts, form: WeightForm, output_quantizer: bool) -> Kernel:
    if form is WeightForm.FLOAT:
        return Kernel.FLOAT
    if form is WeightForm.MATMUL_NBITS:
        return Kernel.MATMUL_NBITS
    if form is WeightForm.GATHER_BLOCK_QUANTIZED:
        return Kernel.GATHER_BLOCK_QUANTIZED
    if form is WeightForm.GATHER_ROWS:
        return Kernel.GATHER_INT8
    if output_quantizer and facts.op_type in INTEGER_OPS:
        return Kernel.INTEGER
    return Kernel.DEQUANTIZE_FLOAT


def plan_layer(
    facts: LayerFacts,
    wbits: int,
    abits: int,
    *,
    spec: Any = None,
    layout: WeightLayout = PER_CHANNEL,
    act_signed: bool = False,
    fuse_outputs: bool = True,
    dynamic: bool = False,
) -> LayerPlan:
    """The plan for ``facts``' layer at (``wbits``, ``abits``) on ``spec`` (32 = float);
    ``dynamic``: ``abits`` is ``DYNAMIC_BITS`` with a range measured per run (ValueError where the
    layer has no such form)."""
    if dynamic:
        return _dynamic_plan(facts, wbits, spec, layout)
    if layout.weight_only:
        abits = FLOAT_BITS  # activations stay float
    grid_bits = weight_grid_bits(spec, wbits, abits)
    form, block = _weight_form(facts, grid_bits, layout, _packed_kernel(spec, wbits))
    container = None if form is WeightForm.FLOAT else weight_grid(grid_bits).container
    bias = None
    if facts.bias_shape is not None:
        int32 = (
            form is WeightForm.PER_CHANNEL and len(facts.bias_shape) == 1 and not layout.weight_only
        )
        bias = BiasForm.INT32 if int32 else BiasForm.FLOAT
    quantized_input = abits != FLOAT_BITS and facts.has_activation
    grid = activation_grid(abits, act_signed) if quantized_input else None
    output_quantizer = quantized_input and fuse_outputs and fusable(wbits, abits)
    kernel, accuracy_level, kernel_block = _kernel(facts, form, output_quantizer), None, None
    if form is WeightForm.MATMUL_NBITS:
        accuracy_level, kernel_block = layout.accuracy_level, block
    elif _fused_into_matmul_nbits(facts, form, grid_bits, abits):
        kernel, accuracy_level, kernel_block = Kernel.MATMUL_NBITS, 4, block or DEFAULT_NBITS_BLOCK
    return LayerPlan(
        name=facts.name,
        op_type=facts.op_type,
        wbits=wbits,
        abits=abits,
        grid_bits=grid_bits,
        form=form,
        recurrence_form=form if facts.recurrent else None,
        block=block,
        container=container,
        accuracy_level=accuracy_level,
        kernel_block=kernel_block,
        bias=bias,
        input_quantizer=None if grid is None else grid.container,
        input_clip=grid is not None and grid.narrow,
        output_quantizer=output_quantizer,
        kernel=kernel,
    )


def int32_bias(
    bias: np.ndarray, x_scale: np.floating | float, w_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 levels, float32 scales) of a bias at s_x·s_w per channel; channels whose bias would
    not fit get a wider scale, |b| / 2^30, which keeps 30 bits of the float bias (with 16-bit grids
    s_x·s_w is around 1e-9 and the int32 would saturate). A channel left at scale 0 (all-zero
    weights and bias: pruned) gets level 0 at scale 1, not 0 / 0 cast to int32."""
    scale = np.broadcast_to(
        np.float32(x_scale) * w_scale.astype(np.float32).reshape(-1), bias.shape
    )
    scale = np.maximum(scale, np.abs(bias).astype(np.float32) / np.float32(2**30)).astype(
        np.float32
    )
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    return np.rint(bias / scale).astype(np.int32), scale


def layer_plan(layer: Layer, wbits: int, abits: int, **options: Any) -> LayerPlan:
    """``plan_layer`` on ``layer``'s facts (for one-off questions; read the facts once to ask
    many)."""
    return plan_layer(facts_of(layer), wbits, abits, **options)
