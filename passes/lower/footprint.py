"""How many tensor bytes ``lower-qdq`` writes for a layer at (w, a): the size objective.

A size budget is a promise about the written model, so the search must price exactly the tensors
the lowering emits — the low-bit weights, their per-channel scales and zero points, the int32 bias
and its scales, the activation quantizers' scales, zero points and narrow-grid clip bounds — not an
idealized ``params * bits / 8``. This module mirrors ``lower_qdq._Lowering`` tensor by tensor, for
every weight layout (``layout.py``: per channel, per block, MatMulNBits), and is tested against it.
A quantizer that several layers share is counted for each of them, and an int32 bias is assumed
wherever a per-channel weight is dequantized: both make the figure an upper bound, so a
configuration that fits the budget here fits it in the written file.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mpqc.core.bits import FLOAT_BITS
from mpqc.ir.layers import Layer, constant_array
from mpqc.passes.lib.grid import Grid, activation_grid, weight_grid
from mpqc.passes.lib.layout import WeightLayout, block_axis, kn_weight
from mpqc.passes.lib.matmul_nbits import nbits_bytes
from mpqc.passes.lib.target import weight_grid_bits
from mpqc.passes.lower.lower_qdq import fusable

__all__ = ["stored_bytes"]

_FLOAT32 = 4


def _packed(elements: int, width: int) -> int:
    return math.ceil(elements * width / 8)


def _quantizer_bytes(bits: int, act_signed: bool) -> int:
    grid = activation_grid(bits, act_signed)
    clip_bounds = 2 * _FLOAT32 if grid.narrow else 0
    return _FLOAT32 + _packed(1, grid.width) + clip_bounds


def _weight_bytes(array: np.ndarray, grid: Grid, axis: int, op_type: str) -> int:
    """A per-channel weight: packed levels, a float32 scale per channel, and a zero point per channel
    or one unit scale (INT2 weights and 8-bit embedding tables dequantize at a unit scale then
    multiply: see ``_dequantize_then_scale``, ``_gather_rows_then_scale``; the others carry a zero
    point per channel, which onnxruntime's QGemm fusion needs)."""
    channels = array.shape[axis]
    unit_scale = grid.width == 2 or (op_type == "Gather" and grid.width == 8)
    return (
        _packed(array.size, grid.width)
        + channels * _FLOAT32
        + (_FLOAT32 if unit_scale else _packed(channels, grid.width))
    )


def stored_bytes(
    layer: Layer,
    wbits: int,
    abits: int,
    spec: Any = None,
    act_signed: bool = False,
    layout: WeightLayout = WeightLayout(),
) -> int:
    """Bytes of the tensors ``lower-qdq`` writes for ``layer`` at (``wbits``, ``abits``); 32 = float."""
    weight = layer.weight_array()
    node = layer.node
    bias = (
        constant_array(node.inputs[2])
        if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2
        else None
    )
    if layout.weight_only or layer.in_subgraph:
        abits = FLOAT_BITS  # lower-qdq keeps these activations float
    grid_bits = weight_grid_bits(spec, wbits, abits)
    block = layout.block(layer, grid_bits, abits)
    total = 0
    if wbits == FLOAT_BITS:
        total += weight.size * _FLOAT32
    elif layout.matmul_nbits(layer, grid_bits, abits):
        total += nbits_bytes(*kn_weight(layer).shape, grid_bits, block)
    elif block:
        k = weight.shape[block_axis(layer) or 0]
        scales = weight.size // k * -(-k // block)  # one per block of each column
        total += _packed(weight.size, weight_grid(grid_bits).width) + scales * _FLOAT32
    else:
        total += _weight_bytes(weight, weight_grid(grid_bits), layer.channel_axis, node.op_type)
    for (
        index
    ) in layer.other_weight_indices:  # an RNN's recurrence weight, per channel at the same bits
        other = constant_array(node.inputs[index])
        assert other is not None
        total += (
            other.size * _FLOAT32
            if wbits == FLOAT_BITS
            else _weight_bytes(other, weight_grid(grid_bits), layer.channel_axis, node.op_type)
        )
    if bias is not None:
        # No activation is quantized in weight-only mode or in a body: no input scale for an int32 bias.
        activations_float = layout.weight_only or layer.in_subgraph
        int32_bias = (
            wbits != FLOAT_BITS
            and weight_grid(grid_bits).width != 2
            and not block
            and not activations_float
        )
        total += bias.size * (
            2 * _FLOAT32 if int32_bias else _FLOAT32
        )  # int32 values + their scales
    # Other constant operands stay float as they are: an RNN's biases.
    counted = {layer.weight_index, *layer.other_weight_indices, *([2] if bias is not None else [])}
    total += sum(
        value.const_value.nbytes
        for index, value in enumerate(node.inputs)
        if value is not None and value.const_value is not None and index not in counted
    )
    if abits != FLOAT_BITS and layer.activation is not None:
        total += _quantizer_bytes(abits, act_signed)
        if fusable(wbits, abits):
            total += _quantizer_bytes(
                abits, act_signed
            )  # the output quantizer of an integer kernel
    return total
