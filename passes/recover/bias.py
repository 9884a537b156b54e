"""Where a layer's per-channel output shift can be folded, and folding it there.

Bias correction adds ``Δ_o = E[y_float]_o − E[y_recovered]_o`` to output channel ``o``. The place
for it depends on the op:

- Conv: its bias input, created (zeros + Δ) when the Conv has none;
- Gemm: ``C``, divided by ``beta`` and scaled by ``alpha`` (``y = alpha·A·B + beta·C``), when ``C``
  is absent or a per-column vector; a full ``[M, N]`` ``C`` or ``beta = 0`` cannot take it;
- MatMul has no bias input. Exporters write a linear layer as ``MatMul`` followed by ``Add`` of a
  constant vector (PP-OCR's attention, every BERT): when the MatMul's only consumer is such an
  Add whose constant nobody else reads, the shift goes into that constant. Otherwise it is not
  applied: inserting a new Add would put a float op between the MatMul and what onnxruntime fuses
  it with, and cost more than a mean shift is worth.

A bias initializer shared with another node is never edited in place: the layer gets its own copy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from mpqc.ir.layers import Layer, constant_array

__all__ = ["BiasSlot", "bias_slot"]


@dataclasses.dataclass(frozen=True)
class BiasSlot:
    """The input (``node``, ``index``) that carries the layer's bias, and how Δ maps onto it."""

    node: ir.Node
    index: int
    #: The bias now (None: the input is absent and will be created).
    current: np.ndarray | None
    #: Δ is multiplied by this before it is added (Gemm: alpha / beta).
    factor: float = 1.0

    def shift(self, graph: ir.Graph, delta: np.ndarray, name: str) -> None:
        """Add ``delta`` (one value per output channel) to the bias, editing only this node's
        input."""
        update = (self.factor * delta).astype(np.float32)
        if self.current is None:
            array = update
        else:
            array = (self.current.astype(np.float32) + update.reshape(self.current.shape)).astype(
                self.current.dtype
            )
        old = self.node.inputs[self.index] if self.index < len(self.node.inputs) else None
        if (
            old is not None
            and old.is_initializer()
            and len(old.uses()) == 1
            and old.const_value is not None
        ):
            old.const_value = ir.tensor(array, name=old.name)
            return
        value = ir.Value(
            name=_unique(graph, name),
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.FLOAT),
            const_value=ir.tensor(array),
        )
        value.const_value.name = value.name
        graph.register_initializer(value)
        if self.index >= len(self.node.inputs):
            self.node.resize_inputs(self.index + 1)
        self.node.replace_input_with(self.index, value)


def _unique(graph: ir.Graph, base: str) -> str:
    taken = (
        set(graph.initializers)
        | {v.name for n in graph for v in n.outputs}
        | {v.name for v in graph.inputs}
    )
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def bias_slot(layer: Layer, out_channels: int) -> BiasSlot | str:
    """The layer's bias slot, or why a mean shift cannot be folded into it."""
    node = layer.node
    if node.op_type == "Conv":
        return _vector_input(node, 2, out_channels, 1.0)
    if node.op_type == "Gemm":
        beta = node.attributes.get_float("beta", 1.0)
        if beta == 0.0:
            return "its Gemm has beta = 0, so C cannot carry a bias"
        return _vector_input(node, 2, out_channels, node.attributes.get_float("alpha", 1.0) / beta)
    if node.op_type == "MatMul":
        uses = node.outputs[0].uses()
        if (
            len(uses) == 1
            and uses[0].node.op_type == "Add"
            and not node.outputs[0].is_graph_output()
        ):
            add = uses[0].node
            other = 1 - uses[0].idx
            slot = _vector_input(add, other, out_channels, 1.0)
            if isinstance(slot, BiasSlot) and slot.current is not None:
                return slot
        return "a MatMul has no bias input and is not followed by an Add of a constant vector"
    return f"{node.op_type} has no bias input"


def _vector_input(node: ir.Node, index: int, channels: int, factor: float) -> BiasSlot | str:
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        return BiasSlot(node, index, None, factor)
    array = constant_array(value)
    if array is None:
        return "its bias is computed at run time"
    if (
        array.size != channels
        or (array.ndim and array.shape[-1] != channels)
        or not np.issubdtype(array.dtype, np.floating)
    ):
        return f"its bias has shape {list(array.shape)}, not one value per output channel"
    return BiasSlot(node, index, array, factor)
