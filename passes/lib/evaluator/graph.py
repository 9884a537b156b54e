"""Building the fake-quant graph in which a bit configuration is an input.

- Weights: for every layer, the weight at each candidate bit-width is fake-quantized once with
  ``grid.fake_quant_weight`` in the form the lowering plan gives it (per channel, per block,
  MatMulNBits' blocks: all dequantize to the same numbers as the stored integers) and the candidates
  plus the float weight are stacked into one initializer ``[K+1, ...]``; a ``Gather`` on a
  per-layer int64 index input picks one (index K = float). An LSTM's/GRU's recurrence weight is
  stacked and selected with its W.
- Activations: each quantizer is ``x -> (Clip(Round(x / s) + z, qmin, qmax) - z) * s`` with ``s``,
  ``z``, ``qmin``, ``qmax`` fed as scalar inputs, and ``Where(on, fq(x), x)`` as an exact bypass.
  In float32 this is bit for bit what ``QuantizeLinear`` (divide, round half to even, add the zero
  point, saturate) then ``DequantizeLinear`` compute; a narrow grid's float Clip before
  ``QuantizeLinear`` is the same as clipping the integer, so every bit-width is one formula.
- The placement is the plan's: a quantizer on each layer's activation input (layers reading one
  tensor at the same bits see identical numbers, which is what sharing means), and one on
  ``output_target`` feeding every consumer except other layers' own input quantizers. A Conv/Gemm
  bias is a graph input too, fed the plan's int32 rounding where the plan asks for it.
- The MatMulNBits mpqc emits at accuracy level 4 first rounds A to int8 per block of K: a
  switchable block quantizer on the layer's input per block size its candidates use
  (``_int8_blocks``). The MatMulNBits onnxruntime fuses a DequantizeLinear -> MatMul into, with
  float activations, is not simulated: sensitivity analysis scores a layer's weights alone as
  (w, float) configurations, and rounding their activations there would count activation damage
  into the weights' score of layers that run with 8-bit activations (bench/RESULTS.md §7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from mpqc.core.bits import FLOAT_BITS
from mpqc.ir import annotations
from mpqc.ir.layers import Layer, constant_array, quantizable_layers
from mpqc.passes.lib.grid import fake_quant_weight, quantize_weight
from mpqc.passes.lib.layout import WeightLayout, block_axis, kn_weight
from mpqc.passes.lib.plan import LayerFacts, WeightForm, output_target, plan_layer

__all__ = ["PREFIX", "LayerSites", "Site", "build"]

PREFIX = "mpqc.eval"


@dataclasses.dataclass(frozen=True)
class Site:
    """One activation quantizer of the fake-quant graph: its input names and the range it
    quantizes."""

    prefix: str
    #: The calibrated clip range (lo, hi) of the tensor it reads, or None when it has no range.
    clip_range: tuple[float, float] | None


@dataclasses.dataclass(frozen=True)
class LayerSites:
    """Where one layer's choices enter the fake-quant graph."""

    name: str
    #: Position in ``quantizable_layers``: the control inputs are named after it.
    index: int
    wbits: tuple[int, ...]
    #: Per candidate weight bit-width, the per-channel scales of the stored integers (for the bias);
    #: None where the weight is blocked (its bias stays float).
    weight_scales: tuple[np.ndarray | None, ...]
    input_site: Site | None
    output_site: Site | None
    #: The layer whose output quantizer produces this layer's input, if any (its scale also scales
    #: the bias).
    upstream: int | None
    #: The float bias of a Conv/Gemm with a constant 1-D bias (lower-qdq may store it as int32).
    bias: np.ndarray | None
    #: (block, switch) of each int8 block quantizer on the input: MatMulNBits at accuracy level 4
    #: rounds A per block of K, and a layer's candidates may run it in different blocks.
    int8_blocks: tuple[tuple[int, str], ...] = ()


def _weight_stack(
    layer: Layer, index: int, wbits: tuple[int, ...], block: Mapping[int, int]
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """[K+1, ...]: input ``index``'s weight dequantized at each of ``wbits`` as lower-qdq stores
    it (``block``: the plan's block size per bits), then float."""
    array = constant_array(layer.node.inputs[index])
    assert array is not None
    candidates: list[np.ndarray] = []
    scales: list[np.ndarray | None] = []
    for bits in wbits:
        size = block[bits] if index == layer.weight_index else 0
        axis = block_axis(layer) if size else 0
        candidates.append(fake_quant_weight(array, bits, layer.channel_axis, size, axis or 0))
        scales.append(None if size else quantize_weight(array, bits, layer.channel_axis)[1])
    return np.stack(candidates + [array]), scales


def build(
    model: ir.Model,
    wbits: tuple[int, ...],
    fuse_outputs: bool,
    layout: WeightLayout,
    facts: Mapping[str, LayerFacts],
) -> tuple[onnx.ModelProto, list[LayerSites]]:
    """The fake-quant ModelProto with control inputs, and where each layer's controls are.

    ``wbits`` are the weight grids to prepare; activation bits change a weight's form only through
    MatMulNBits, which needs float activations, so each grid is planned at float activations."""
    layers = quantizable_layers(model.graph)
    proto = ir.to_proto(model)
    graph = proto.graph
    producer_index = {out: i for i, node in enumerate(graph.node) for out in node.output}
    layer_node = {id(layer): producer_index[layer.node.outputs[0].name] for layer in layers}
    inserted_before: dict[
        int, list[onnx.NodeProto]
    ] = {}  # original node index -> nodes to insert before it
    inserted_after: dict[int, list[onnx.NodeProto]] = {}  # -1 = before everything
    new_inputs: list[onnx.ValueInfoProto] = []
    new_initializers: list[onnx.TensorProto] = []
    renames: dict[tuple[int, int], str] = {}  # (node index, input slot) -> new input name
    plans: list[LayerSites] = []

    # Output quantizers first: they decide what every consumer of a layer's output sees.
    targets: dict[int, tuple[str, Site]] = {}
    for index, layer in enumerate(layers):
        target = output_target(layer) if fuse_outputs else None
        if target is None:
            continue
        site = Site(f"{PREFIX}.{index}.out", _clip_range(target))
        out_name = f"{site.prefix}.y"
        nodes = _fake_quant(site.prefix, target.name, target.name, out_name)
        new_inputs += _site_inputs(site.prefix)
        producer = target.producer()
        assert producer is not None
        inserted_after.setdefault(producer_index[producer.outputs[0].name], []).extend(nodes)
        for use in target.uses():
            renames[(producer_index[use.node.outputs[0].name], use.idx)] = out_name
        targets[index] = (target.name, site)

    viewed = {name: site.prefix + ".y" for name, site in targets.values()}
    feeding = {name: index for index, (name, _) in targets.items()}
    for index, layer in enumerate(layers):
        node_index = layer_node[id(layer)]
        before = inserted_before.setdefault(node_index, [])
        choice = f"{PREFIX}.{index}.w"
        new_inputs.append(helper.make_tensor_value_info(choice, TensorProto.INT64, []))
        scales: list[np.ndarray | None] = []
        planned = {
            bits: plan_layer(facts[layer.name], bits, FLOAT_BITS, layout=layout) for bits in wbits
        }
        blocks = {bits: plan.block for bits, plan in planned.items()}
        for slot in (layer.weight_index, *layer.other_weight_indices):
            stack, slot_scales = _weight_stack(layer, slot, wbits, blocks)
            scales = scales or slot_scales
            stack_name = f"{PREFIX}.{index}.{slot}.wstack"
            new_initializers.append(numpy_helper.from_array(stack, stack_name))
            value = f"{choice}.{slot}.value"
            before.append(
                helper.make_node(
                    "Gather", [stack_name, choice], [value], name=f"{choice}.{slot}.gather", axis=0
                )
            )
            renames[(node_index, slot)] = value

        input_site = None
        activation = layer.activation
        if activation is not None and layer.activation_index is not None and _is_float(activation):
            input_site = Site(f"{PREFIX}.{index}.in", _clip_range(activation))
            fallback = viewed.get(activation.name, activation.name)
            before.extend(
                _fake_quant(input_site.prefix, activation.name, fallback, f"{input_site.prefix}.y")
            )
            new_inputs += _site_inputs(input_site.prefix)
            renames[(node_index, layer.activation_index)] = f"{input_site.prefix}.y"

        bias = None
        if layer.node.op_type in ("Conv", "Gemm") and len(layer.node.inputs) >= 3:
            bias_array = constant_array(layer.node.inputs[2])
            if bias_array is not None and bias_array.ndim == 1:
                bias = bias_array.astype(np.float32)
                bias_name = f"{PREFIX}.{index}.bias"
                new_inputs.append(
                    helper.make_tensor_value_info(bias_name, TensorProto.FLOAT, list(bias.shape))
                )
                renames[(node_index, 2)] = bias_name
        int8_blocks = []
        for block in sorted(
            {
                plan.kernel_block
                for plan in planned.values()
                if plan.form is WeightForm.MATMUL_NBITS and plan.accuracy_level == 4
            }
        ):
            assert activation is not None and layer.activation_index is not None
            prefix = f"{PREFIX}.{index}.a_int8.{block}"
            source = renames.get((node_index, layer.activation_index), activation.name)
            k = kn_weight(layer).shape[0]
            before.extend(_int8_blocks(prefix, source, k, block, _opset(proto)))
            new_inputs.append(helper.make_tensor_value_info(f"{prefix}.on", TensorProto.BOOL, []))
            renames[(node_index, layer.activation_index)] = f"{prefix}.y"
            int8_blocks.append((block, f"{prefix}.on"))
        output_site = targets[index][1] if index in targets else None
        upstream = feeding.get(activation.name) if activation is not None else None
        plans.append(
            LayerSites(
                layer.name,
                index,
                wbits,
                tuple(scales),
                input_site,
                output_site,
                upstream,
                bias,
                tuple(int8_blocks),
            )
        )

    nodes: list[onnx.NodeProto] = list(inserted_after.get(-1, []))
    for i, node in enumerate(graph.node):
        nodes.extend(inserted_before.get(i, []))
        for slot in range(len(node.input)):
            if (i, slot) in renames:
                node.input[slot] = renames[(i, slot)]
        nodes.append(node)
        nodes.extend(inserted_after.get(i, []))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.extend(new_inputs)
    graph.initializer.extend(new_initializers)
    return proto, plans


def _clip_range(value: ir.Value) -> tuple[float, float] | None:
    observed = annotations.CALIB_RANGE.get(value)
    if observed is None:
        return None
    return float(observed["lo"]), float(observed["hi"])


def _is_float(value: ir.Value) -> bool:
    return value.dtype is None or value.dtype in (
        ir.DataType.FLOAT,
        ir.DataType.FLOAT16,
        ir.DataType.DOUBLE,
    )


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _int8_blocks(prefix: str, x: str, k: int, block: int, opset: int) -> list[onnx.NodeProto]:
    """``y = on ? A rounded as MatMulNBits' accuracy level 4 rounds it : x`` for ``x`` of shape
    [..., k].

    Per row, per block of ``block`` values along the last axis (the last block zero-padded): levels
    a · (127 / max|a|) rounded half to even, dequantized at scale max|a| / 127 — onnxruntime's
    kernel multiplies by that inverse rather than dividing by the scale, which decides exact ties
    (the tests compare against the kernel). A block of zeros stays zero.
    """
    p = prefix
    padded = -(-k // block) * block

    def node(op: str, inputs: list[str], name: str, **attributes: object) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [f"{p}.{name}"], name=f"{p}.{name}", **attributes)

    def const(name: str, array: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant",
            [],
            [f"{p}.{name}"],
            name=f"{p}.{name}",
            value=numpy_helper.from_array(array, f"{p}.{name}"),
        )

    reduce = (
        node("ReduceMax", [f"{p}.abs", f"{p}.last"], "amax", keepdims=1)
        if opset >= 18
        else node("ReduceMax", [f"{p}.abs"], "amax", axes=[-1], keepdims=1)
    )
    return [
        const("rows", np.array([-1, k], np.int64)),
        const("padded_rows", np.array([-1, padded], np.int64)),
        const("blocks", np.array([-1, padded // block, block], np.int64)),
        const("pads", np.array([0, 0, 0, padded - k], np.int64)),
        const("last", np.array([-1], np.int64)),
        const("levels", np.array(127.0, np.float32)),
        const("zero", np.array(0.0, np.float32)),
        const("start", np.array([0], np.int64)),
        const("stop", np.array([k], np.int64)),
        node("Shape", [x], "shape"),
        node("Reshape", [x, f"{p}.rows"], "2d"),
        node("Pad", [f"{p}.2d", f"{p}.pads"], "padded"),
        node("Reshape", [f"{p}.padded", f"{p}.blocks"], "3d"),
        node("Abs", [f"{p}.3d"], "abs"),
        reduce,
        node("Div", [f"{p}.levels", f"{p}.amax"], "reciprocal"),
        node("Equal", [f"{p}.amax", f"{p}.zero"], "empty"),
        node("Where", [f"{p}.empty", f"{p}.zero", f"{p}.reciprocal"], "inverse"),
        node("Mul", [f"{p}.3d", f"{p}.inverse"], "ratio"),
        node("Round", [f"{p}.ratio"], "q"),
        node("Div", [f"{p}.amax", f"{p}.levels"], "scale"),
        node("Mul", [f"{p}.q", f"{p}.scale"], "dq"),
        node("Reshape", [f"{p}.dq", f"{p}.padded_rows"], "dq2d"),
        node("Slice", [f"{p}.dq2d", f"{p}.start", f"{p}.stop", f"{p}.last"], "cut"),
        node("Reshape", [f"{p}.cut", f"{p}.shape"], "dqx"),
        helper.make_node("Where", [f"{p}.on", f"{p}.dqx", x], [f"{p}.y"], name=f"{p}.select"),
    ]


def _site_inputs(prefix: str) -> list[onnx.ValueInfoProto]:
    inputs = [helper.make_tensor_value_info(f"{prefix}.on", TensorProto.BOOL, [])]
    inputs += [
        helper.make_tensor_value_info(f"{prefix}.{p}", TensorProto.FLOAT, [])
        for p in ("scale", "zp", "qmin", "qmax")
    ]
    return inputs


def _fake_quant(prefix: str, x: str, fallback: str, out: str) -> list[onnx.NodeProto]:
    """``out = on ? (Clip(Round(x / s) + z, qmin, qmax) - z) * s : fallback``."""
    p = prefix

    def node(op: str, inputs: list[str], name: str) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [f"{p}.{name}"], name=f"{p}.{name}")

    return [
        node("Div", [x, f"{p}.scale"], "div"),
        node("Round", [f"{p}.div"], "round"),
        node("Add", [f"{p}.round", f"{p}.zp"], "shift"),
        node("Clip", [f"{p}.shift", f"{p}.qmin", f"{p}.qmax"], "q"),
        node("Sub", [f"{p}.q", f"{p}.zp"], "centred"),
        node("Mul", [f"{p}.centred", f"{p}.scale"], "dq"),
        helper.make_node("Where", [f"{p}.on", f"{p}.dq", fallback], [out], name=f"{p}.select"),
    ]
