"""How many tensor bytes a layer's plan writes: the size objective.

A size budget is a promise about the written model, so the search must price exactly the tensors
the lowering emits — the low-bit weights, their scales and zero points, the int32 bias and its
scales, the activation quantizers' scales, zero points and narrow-grid clip bounds — not an
idealized ``params * bits / 8``. This is the plan's byte sum, tested against what ``lower-qdq``
writes. A quantizer that several layers share is counted for each of them, and an int32 bias and an
output quantizer are counted wherever the plan asks for them (the lowering places them only where
the input arrives dequantized and an output target exists): both make the figure an upper bound, so
a configuration that fits the budget here fits it in the written file.
"""

from __future__ import annotations

import math

import numpy as np

from mpqc.ir.layers import Layer, constant_array
from mpqc.passes.lib.grid import activation_grid, weight_grid
from mpqc.passes.lib.layout import block_axis, kn_weight
from mpqc.passes.lib.matmul_nbits import nbits_bytes
from mpqc.passes.lib.plan.decide import BiasForm, LayerPlan, WeightForm

__all__ = ["stored_bytes"]

_FLOAT32 = 4
#: Forms that dequantize at one unit scale then multiply by the per-channel scales: no zero points.
_UNIT_SCALE = frozenset({WeightForm.UNIT_SCALE_MUL, WeightForm.GATHER_ROWS})


def _packed(elements: int, width: int) -> int:
    return math.ceil(elements * width / 8)


def _quantizer_bytes(plan: LayerPlan, act_signed: bool) -> int:
    """A scale, a zero point and, on a narrow grid, the float Clip's bounds."""
    grid = activation_grid(plan.abits, act_signed)
    return _FLOAT32 + _packed(1, grid.width) + (2 * _FLOAT32 if plan.input_clip else 0)


def _per_channel_bytes(array: np.ndarray, plan: LayerPlan, axis: int, form: WeightForm) -> int:
    """Packed levels, a float32 scale per channel, and a zero point per channel (which
    onnxruntime's QGemm fusion needs) or one unit scale."""
    channels = array.shape[axis]
    width = weight_grid(plan.grid_bits).width
    extra = _FLOAT32 if form in _UNIT_SCALE else _packed(channels, width)
    return _packed(array.size, width) + channels * _FLOAT32 + extra


def _dynamic_lstm_bytes(array: np.ndarray) -> int:
    """int8 levels, a float32 scale and an int8 zero point per direction and gate column."""
    return array.size + array.shape[0] * array.shape[1] * (_FLOAT32 + 1)


def _weight_bytes(layer: Layer, plan: LayerPlan, array: np.ndarray) -> int:
    form = plan.form
    if form is WeightForm.FLOAT:
        return array.size * _FLOAT32
    if form is WeightForm.DYNAMIC_LSTM:
        return _dynamic_lstm_bytes(array)
    if form is WeightForm.MATMUL_NBITS:
        return nbits_bytes(*kn_weight(layer).shape, plan.grid_bits, plan.block)
    if form is WeightForm.MATMUL_INTEGER:  # int8 levels and a float32 scale per column
        return array.size + kn_weight(layer).shape[1] * _FLOAT32
    if plan.block:  # per block, or GatherBlockQuantized: one scale per block of each column
        k = array.shape[block_axis(layer) or 0]
        scales = array.size // k * -(-k // plan.block)
        return _packed(array.size, weight_grid(plan.grid_bits).width) + scales * _FLOAT32
    return _per_channel_bytes(array, plan, layer.channel_axis, form)


def stored_bytes(layer: Layer, plan: LayerPlan, act_signed: bool = False) -> int:
    """Bytes of the tensors ``lower-qdq`` writes for ``layer`` as ``plan`` says."""
    node = layer.node
    total = _weight_bytes(layer, plan, layer.weight_array())
    for index in layer.other_weight_indices:
        other = constant_array(node.inputs[index])
        assert other is not None and plan.recurrence_form is not None
        if plan.recurrence_form is WeightForm.FLOAT:
            total += other.size * _FLOAT32
        elif plan.recurrence_form is WeightForm.DYNAMIC_LSTM:
            total += _dynamic_lstm_bytes(other)
        else:
            total += _per_channel_bytes(other, plan, layer.channel_axis, plan.recurrence_form)
    counted = {layer.weight_index, *layer.other_weight_indices}
    if plan.bias is not None:
        bias = constant_array(node.inputs[2])
        assert bias is not None
        # int32 values and a float32 scale each, or the float bias as it is
        total += bias.size * (2 * _FLOAT32 if plan.bias is BiasForm.INT32 else _FLOAT32)
        counted.add(2)
    # Other constant operands stay float as they are: an RNN's biases.
    total += sum(
        value.const_value.nbytes
        for index, value in enumerate(node.inputs)
        if value is not None and value.const_value is not None and index not in counted
    )
    if plan.input_quantizer is not None and not plan.dynamic:  # a dynamic range stores nothing
        total += _quantizer_bytes(plan, act_signed)
    if plan.output_quantizer:
        total += _quantizer_bytes(plan, act_signed)
    return total
