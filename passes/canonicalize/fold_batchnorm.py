"""``fold-batchnorm``: fold an inference-mode BatchNormalization into the Conv before it.

Quantizing a Conv whose output is then rescaled per channel by a BatchNorm wastes the weight grid:
the scale the BN applies afterwards is what the integer kernel should have had. Folding gives the
quantizer the weights that actually reach the output (W·γ/σ) and removes a float op the runtime
would otherwise run between integer kernels.

Inside If/Loop/Scan bodies too (a Conv and its BatchNorm in the same body, their parameters
constants as ``constant_array`` sees them: the body's or an outer graph's initializers): the
folded weight and bias become initializers of that body, under names no other scope uses.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mpqc.ir.annotations import CALIB_RANGE
from mpqc.ir.graphs import fresh_name, scope_names
from mpqc.ir.layers import constant_array
from mpqc.passes.infra.base import Pass
from mpqc.passes.infra.registry import register

__all__ = ["FoldBatchNormPass"]


@register
class FoldBatchNormPass(Pass):
    name = "fold-batchnorm"
    preserves = frozenset({CALIB_RANGE})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        names = scope_names(model.graph)
        for graph in (model.graph, *model.graph.subgraphs()):
            folded += _fold_in(graph, names)
        return ir.passes.PassResult(model, modified=folded > 0)


def _fold_in(graph: ir.Graph, names: set[str]) -> int:
    """Fold the BatchNorms of ``graph`` (not its bodies') into their Convs; how many."""
    folded = 0
    for bn in list(graph):
        if (
            bn.op_type != "BatchNormalization"
            or bn.domain not in ("", "ai.onnx")
            or len(bn.outputs) != 1
        ):
            continue
        conv = bn.inputs[0].producer() if bn.inputs[0] is not None else None
        if conv is None or conv.op_type != "Conv" or len(bn.inputs[0].uses()) != 1:
            continue
        if bn.inputs[0].is_graph_output():
            # the unnormalized Conv output is a result of the model: folding would change it
            continue
        if _fold(graph, conv, bn, names):
            folded += 1
    return folded


def _fold(graph: ir.Graph, conv: ir.Node, bn: ir.Node, names: set[str]) -> bool:
    weight = constant_array(conv.inputs[1])
    bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias = constant_array(bias_value) if bias_value is not None else None
    params = [constant_array(v) for v in bn.inputs[1:5]]
    if (
        weight is None
        or (bias_value is not None and bias is None)
        or any(p is None for p in params)
    ):
        return False
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
    eps = bn.attributes.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var + eps)
    new_weight = (weight.astype(np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(
        weight.dtype
    )
    old_bias = bias.astype(np.float64) if bias is not None else np.zeros_like(mean)
    new_bias = ((old_bias - mean) * scale + beta).astype(weight.dtype)

    base = conv.name or conv.outputs[0].name or "conv"
    w_value = _initializer(graph, fresh_name(f"{base}.weight_folded", names), new_weight)
    b_value = _initializer(graph, fresh_name(f"{base}.bias_folded", names), new_bias)
    conv.replace_input_with(1, w_value)
    if len(conv.inputs) > 2:
        conv.replace_input_with(2, b_value)
    else:
        conv.resize_inputs(3)
        conv.replace_input_with(2, b_value)
    out = bn.outputs[0]
    conv_out = conv.outputs[0]
    conv_out.metadata_props.update(out.metadata_props)
    output_name = out.name if out.is_graph_output() else None
    out.replace_all_uses_with(conv_out, replace_graph_outputs=True)
    graph.remove(bn, safe=True)
    if output_name is not None:
        # A graph output keeps its name, which callers fetch it by, and its declared type and
        # shape, which onnx may not infer for the Conv (behind a Loop, say) and the checker needs.
        out.name = None
        conv_out.name = output_name
        conv_out.type = out.type or conv_out.type
        conv_out.shape = out.shape or conv_out.shape
    return True


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(
        name=name,
        const_value=ir.tensor(array, name=name),
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
    )
    graph.register_initializer(value)
    return value
