"""onnxruntime's ``com.microsoft.DynamicQuantizeLSTM`` in place of an LSTM.

The contrib op's contract (onnxruntime ContribOperators.md, DynamicQuantizeLSTM): the LSTM's eight
inputs, with W and R as int8 ``[D, K, 4H]``, then ``W_scale``, ``W_zero_point``, ``R_scale`` and
``R_zero_point`` per direction and gate column; the LSTM's attributes, time-major only (no
``layout``). Lowering writes it in place of the LSTM and the evaluator runs it beside the float
one, so both build it here.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

__all__ = ["dynamic_quantize_lstm"]

#: An LSTM's inputs: X, W, R, B, sequence_lens, initial_h, initial_c, P.
_LSTM_INPUTS = 8


def dynamic_quantize_lstm(
    lstm: ir.Node,
    quantized: Mapping[int, tuple[ir.Value, ir.Value, ir.Value]],
    name: str | None = None,
) -> ir.Node:
    """A DynamicQuantizeLSTM computing what ``lstm`` computes with its weights at input index 1
    (W) and 2 (R) replaced by ``quantized[index]``: (int8 levels, scales, zero points)."""
    inputs = list(lstm.inputs) + [None] * (_LSTM_INPUTS - len(lstm.inputs))
    scales_and_zero_points = []
    for index in sorted(quantized):
        levels, scales, zero_points = quantized[index]
        inputs[index] = levels
        scales_and_zero_points += [scales, zero_points]
    return ir.node(
        "DynamicQuantizeLSTM",
        inputs + scales_and_zero_points,
        {name: value for name, value in lstm.attributes.items() if name != "layout"},
        num_outputs=len(lstm.outputs),
        domain="com.microsoft",
        name=name,
    )
