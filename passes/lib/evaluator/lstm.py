"""The evaluator's DynamicQuantizeLSTM: an LSTM's dynamic form, simulated by the kernel itself.

DynamicQuantizeLSTM rounds its input sequence and, on every step, the hidden state it has just
computed to uint8 on their own ranges: inside the kernel, where no fake-quant node can reach. So the
fake-quant graph runs onnxruntime's own kernel beside the float LSTM, on the same input, with the
int8 weights lower-qdq writes (``grid.quantize_lstm_weight`` at the plan's grid), and a ``Where``
per output picks it when the layer's kernel switch is on; a fixed switch drops the branch not taken
(``cut.py``). With batched samples onnxruntime may split the batch across threads, each part
quantized on its own range.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from mpqc.core.bits import DYNAMIC_BITS
from mpqc.ir.graphs import return_instead
from mpqc.ir.layers import Layer, constant_array
from mpqc.passes.lib.dynamic_lstm import dynamic_quantize_lstm
from mpqc.passes.lib.grid import quantize_lstm_weight
from mpqc.passes.lib.plan import LayerFacts, plan_layer

__all__ = ["dynamic_lstm_branch", "dynamic_lstm_weights"]

#: Input slot -> (int8 levels [D, K, 4H], scales [D, 4H]).
Weights = Mapping[int, tuple[np.ndarray, np.ndarray]]


def dynamic_lstm_weights(layer: Layer, facts: LayerFacts, spec: Any) -> Weights:
    """W and R as the plan's ``dynamic-lstm`` form stores them (read before the evaluator replaces
    them by its weight stacks)."""
    grid_bits = plan_layer(facts, 8, DYNAMIC_BITS, spec=spec, dynamic=True).grid_bits
    weights = {}
    for slot in (layer.weight_index, *layer.other_weight_indices):
        array = constant_array(layer.node.inputs[slot])
        assert array is not None
        weights[slot] = quantize_lstm_weight(array, grid_bits)
    return weights


def _initializer(builder: Any, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.type, value.shape = ir.TensorType(value.const_value.dtype), ir.Shape(array.shape)
    builder.graph.register_initializer(value)
    return value


def dynamic_lstm_branch(
    builder: Any, prefix: str, layer: Layer, x: ir.Value, weights: Weights
) -> str:
    """DynamicQuantizeLSTM on ``x`` beside ``layer``'s LSTM (``builder``: the graph's
    ``graph._Builder``), and a ``Where`` on each output the LSTM computes; returns the switch."""
    node = layer.node
    switch = builder.input(f"{prefix}.on", ir.DataType.BOOL).name
    quantized = {
        index: (
            _initializer(builder, f"{prefix}.{index}.levels", levels),
            _initializer(builder, f"{prefix}.{index}.scale", scales),
            _initializer(builder, f"{prefix}.{index}.zp", np.zeros(scales.shape, np.int8)),
        )
        for index, (levels, scales) in weights.items()
    }
    kernel = dynamic_quantize_lstm(node, quantized, name=prefix)
    kernel.replace_input_with(0, x)
    nodes = [kernel]
    for slot, (out, alternative) in enumerate(zip(node.outputs, kernel.outputs, strict=True)):
        if not out.name:
            continue
        alternative.name = f"{prefix}.{slot}"
        uses = list(out.uses())
        where = builder.node("Where", [switch, alternative, out], f"{prefix}.{slot}.y")
        nodes.append(where)
        for use in uses:
            use.node.replace_input_with(use.idx, where.outputs[0])
        if out.is_graph_output():
            return_instead(out, where.outputs[0])
    assert node.graph is not None
    node.graph.insert_after(node, nodes)
    return switch
