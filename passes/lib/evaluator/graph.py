"""Building the fake-quant graph in which a bit configuration is an input.

The graph is built with onnx_ir on a clone of the model (``_Builder`` names every node, value and
control input so the cuts in ``cut.py`` can find them), then serialized once:

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
- A dynamic range (``w8adyn``): the input quantizer of a layer that has the form takes its scale
  and zero point from the tensor itself when its ``dyn`` switch is on, as DynamicQuantizeLinear
  computes them (the range widened to contain 0, ``(hi - lo) / 255``, scale 1 for a constant
  zero tensor, the zero point clamped then rounded half to even). The range is the whole tensor's:
  with batched samples, the batch's, as onnxruntime sees that batch.
- An LSTM's dynamic form runs onnxruntime's own DynamicQuantizeLSTM beside the float LSTM
  (``lstm.py`` says why), picked by the layer's kernel switch.
- The placement is the plan's: a quantizer on each layer's activation input (layers reading one
  tensor at the same bits see identical numbers, which is what sharing means), and one on
  ``output_target`` feeding every consumer except other layers' own input quantizers. A Conv/Gemm
  bias is a graph input too, fed the plan's int32 rounding where the plan asks for it.
- Layers inside If/Loop/Scan bodies get the same nodes inside their body, where lower-qdq puts
  them; their controls and weight stacks stay main-graph inputs and initializers, which a body reads
  from the enclosing scope, so one configuration feeds them all (a Loop's quantizers act on every
  iteration with the range calibrate observed over all of them).
- The MatMulNBits mpqc emits at accuracy level 4 first rounds A to int8 per block of K, and so
  does the one onnxruntime fuses a DequantizeLinear -> MatMul into behind a 16-bit input: a
  switchable block quantizer on the layer's input per block size its candidates use
  (``_Builder.int8_blocks``). The MatMulNBits onnxruntime fuses behind float activations is not
  simulated: sensitivity analysis scores a layer's weights alone as
  (w, float) configurations, and rounding their activations there would count activation damage
  into the weights' score of layers that run with 8-bit activations (bench/RESULTS.md §7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS
from mpqc.ir import annotations
from mpqc.ir.graphs import return_instead
from mpqc.ir.layers import Layer, constant_array, quantizable_layers
from mpqc.passes.lib.evaluator.lstm import dynamic_lstm_branch, dynamic_lstm_weights
from mpqc.passes.lib.evaluator.store import WeightStore
from mpqc.passes.lib.grid import fake_quant_weight, weight_scales
from mpqc.passes.lib.layout import WeightLayout, block_axis
from mpqc.passes.lib.plan import LayerFacts, body_result, output_target, plan_layer
from mpqc.passes.lib.widen import widen_to_float32

__all__ = ["PREFIX", "LayerSites", "Site", "build"]

PREFIX = "mpqc.eval"


@dataclasses.dataclass(frozen=True)
class Site:
    """One activation quantizer of the fake-quant graph: its input names and the range it
    quantizes."""

    prefix: str
    #: The name of the tensor it reads.
    tensor: str
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
    #: The switch that makes the input quantizer's range dynamic (None: the layer has no such form).
    dynamic_switch: str | None = None
    #: The switch that selects the DynamicQuantizeLSTM beside an LSTM (None: not an LSTM with it).
    kernel_switch: str | None = None


def _weight_entries(
    layer: Layer,
    index: int,
    wbits: tuple[int, ...],
    block: Mapping[int, int],
    scales: list[np.ndarray | None],
) -> Iterator[np.ndarray]:
    """The entries of input ``index``'s weight stack, one at a time (a big weight's stack is K+1
    times its bytes): the weight dequantized at each of ``wbits`` as lower-qdq stores it
    (``block``: the plan's block size per bits), then float. Each candidate's per-channel scales
    go to ``scales`` (None where blocked)."""
    array = constant_array(layer.node.inputs[index])
    assert array is not None
    for bits in wbits:
        size = block[bits] if index == layer.weight_index else 0
        axis = block_axis(layer) if size else 0
        scales.append(None if size else weight_scales(array, bits, layer.channel_axis))
        yield fake_quant_weight(array, bits, layer.channel_axis, size, axis or 0)
    yield array


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


class _Builder:
    """Adds named nodes, graph inputs and initializers to one graph; values are found by name."""

    def __init__(self, model: ir.Model, store: WeightStore) -> None:
        self.graph = model.graph
        self.opset = model.opset_imports.get("", 1)
        self.store = store
        self.values: dict[str, ir.Value] = {}

    def __getitem__(self, name: str) -> ir.Value:
        return self.values[name]

    def input(self, name: str, dtype: ir.DataType, shape: Sequence[int] = ()) -> ir.Value:
        """A new graph input: one of the controls a configuration feeds."""
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))
        self.graph.inputs.append(value)
        self.values[name] = value
        return value

    def stack(self, name: str, entries: Iterator[np.ndarray], count: int) -> ir.Value:
        """A new initializer: ``count`` entries stacked (``WeightStore.stack``)."""
        tensor = self.store.stack(name, entries, count)
        value = ir.Value(name=name, const_value=tensor)
        value.type, value.shape = ir.TensorType(tensor.dtype), ir.Shape(tensor.shape)
        self.graph.register_initializer(value)
        return value

    def node(
        self, op: str, inputs: Sequence[ir.Value | str], name: str, **attributes: object
    ) -> ir.Node:
        """``op`` on ``inputs`` (values, or names of values made here), its node and its one
        output both named ``name``."""
        node = ir.node(
            op,
            [self.values[x] if isinstance(x, str) else x for x in inputs],
            attributes or None,
            name=name,
        )
        node.outputs[0].name = name
        self.values[name] = node.outputs[0]
        return node

    def constant(self, name: str, array: np.ndarray) -> ir.Node:
        return self.node("Constant", [], name, value=ir.tensor(array, name=name))

    def site_inputs(self, prefix: str) -> None:
        """A quantizer's controls: ``on``, then its scale, zero point and grid bounds."""
        self.input(f"{prefix}.on", ir.DataType.BOOL)
        for part in ("scale", "zp", "qmin", "qmax"):
            self.input(f"{prefix}.{part}", ir.DataType.FLOAT)

    def fake_quant(
        self, prefix: str, x: ir.Value, fallback: ir.Value, dynamic: bool = False
    ) -> list[ir.Node]:
        """``{prefix}.y = on ? (Clip(Round(x / s) + z, qmin, qmax) - z) * s : fallback``; with
        ``dynamic``, ``s`` and ``z`` are ``x``'s own (``dynamic_qparams``) when ``{prefix}.dyn``
        is on."""
        p = prefix
        nodes, scale, zero_point = [], f"{p}.scale", f"{p}.zp"
        if dynamic:
            self.input(f"{p}.dyn", ir.DataType.BOOL)
            nodes = self.dynamic_qparams(p, x)
            nodes += [
                self.node("Where", [f"{p}.dyn", f"{p}.dyn_scale", scale], f"{p}.use_scale"),
                self.node("Where", [f"{p}.dyn", f"{p}.dyn_zp", zero_point], f"{p}.use_zp"),
            ]
            scale, zero_point = f"{p}.use_scale", f"{p}.use_zp"
        return nodes + [
            self.node("Div", [x, scale], f"{p}.div"),
            self.node("Round", [f"{p}.div"], f"{p}.round"),
            self.node("Add", [f"{p}.round", zero_point], f"{p}.shift"),
            self.node("Clip", [f"{p}.shift", f"{p}.qmin", f"{p}.qmax"], f"{p}.q"),
            self.node("Sub", [f"{p}.q", zero_point], f"{p}.centred"),
            self.node("Mul", [f"{p}.centred", scale], f"{p}.dq"),
            self._select(p, f"{p}.dq", fallback),
        ]

    def dynamic_qparams(self, prefix: str, x: ir.Value) -> list[ir.Node]:
        """``{prefix}.dyn_scale`` and ``{prefix}.dyn_zp``: DynamicQuantizeLinear's uint8 scale and
        zero point of the whole tensor ``x`` (see the module docstring)."""
        p = prefix
        constants = {
            "zero": np.array(0.0, np.float32),
            "one": np.array(1.0, np.float32),
            "levels": np.array(255.0, np.float32),
        }
        nodes = [self.constant(f"{p}.dyn_{name}", array) for name, array in constants.items()]
        reduce = {"keepdims": 0}
        return nodes + [
            self.node("ReduceMin", [x], f"{p}.dyn_min", **reduce),
            self.node("ReduceMax", [x], f"{p}.dyn_max", **reduce),
            self.node("Min", [f"{p}.dyn_min", f"{p}.dyn_zero"], f"{p}.dyn_lo"),
            self.node("Max", [f"{p}.dyn_max", f"{p}.dyn_zero"], f"{p}.dyn_hi"),
            self.node("Sub", [f"{p}.dyn_hi", f"{p}.dyn_lo"], f"{p}.dyn_width"),
            self.node("Div", [f"{p}.dyn_width", f"{p}.dyn_levels"], f"{p}.dyn_step"),
            self.node("Equal", [f"{p}.dyn_width", f"{p}.dyn_zero"], f"{p}.dyn_flat"),
            self.node(
                "Where", [f"{p}.dyn_flat", f"{p}.dyn_one", f"{p}.dyn_step"], f"{p}.dyn_scale"
            ),
            self.node("Div", [f"{p}.dyn_lo", f"{p}.dyn_scale"], f"{p}.dyn_ratio"),
            self.node("Neg", [f"{p}.dyn_ratio"], f"{p}.dyn_initial"),
            self.node(
                "Clip", [f"{p}.dyn_initial", f"{p}.dyn_zero", f"{p}.dyn_levels"], f"{p}.dyn_zc"
            ),
            self.node("Round", [f"{p}.dyn_zc"], f"{p}.dyn_zp"),
        ]

    def _select(self, p: str, on_value: str, fallback: ir.Value) -> ir.Node:
        node = self.node("Where", [f"{p}.on", on_value, fallback], f"{p}.y")
        node.name = f"{p}.select"
        return node

    def int8_blocks(self, prefix: str, x: ir.Value, k: int, block: int) -> list[ir.Node]:
        """``{prefix}.y = on ? A rounded as MatMulNBits' accuracy level 4 rounds it : x`` for ``x``
        of shape [..., k].

        Per row, per block of ``block`` values along the last axis (the last block zero-padded):
        levels a · (127 / max|a|) rounded half to even, dequantized at scale max|a| / 127 —
        onnxruntime's kernel multiplies by that inverse rather than dividing by the scale, which
        decides exact ties (the tests compare against the kernel). A block of zeros stays zero.
        """
        p = prefix
        padded = -(-k // block) * block
        constants = {
            "rows": np.array([-1, k], np.int64),
            "padded_rows": np.array([-1, padded], np.int64),
            "blocks": np.array([-1, padded // block, block], np.int64),
            "pads": np.array([0, 0, 0, padded - k], np.int64),
            "last": np.array([-1], np.int64),
            "levels": np.array(127.0, np.float32),
            "zero": np.array(0.0, np.float32),
            "start": np.array([0], np.int64),
            "stop": np.array([k], np.int64),
        }
        nodes = [self.constant(f"{p}.{name}", array) for name, array in constants.items()]
        nodes += [
            self.node("Shape", [x], f"{p}.shape"),
            self.node("Reshape", [x, f"{p}.rows"], f"{p}.2d"),
            self.node("Pad", [f"{p}.2d", f"{p}.pads"], f"{p}.padded"),
            self.node("Reshape", [f"{p}.padded", f"{p}.blocks"], f"{p}.3d"),
            self.node("Abs", [f"{p}.3d"], f"{p}.abs"),
            self.node("ReduceMax", [f"{p}.abs", f"{p}.last"], f"{p}.amax", keepdims=1)
            if self.opset >= 18
            else self.node("ReduceMax", [f"{p}.abs"], f"{p}.amax", axes=[-1], keepdims=1),
            self.node("Div", [f"{p}.levels", f"{p}.amax"], f"{p}.reciprocal"),
            self.node("Equal", [f"{p}.amax", f"{p}.zero"], f"{p}.empty"),
            self.node("Where", [f"{p}.empty", f"{p}.zero", f"{p}.reciprocal"], f"{p}.inverse"),
            self.node("Mul", [f"{p}.3d", f"{p}.inverse"], f"{p}.ratio"),
            self.node("Round", [f"{p}.ratio"], f"{p}.q"),
            self.node("Div", [f"{p}.amax", f"{p}.levels"], f"{p}.scale"),
            self.node("Mul", [f"{p}.q", f"{p}.scale"], f"{p}.dq"),
            self.node("Reshape", [f"{p}.dq", f"{p}.padded_rows"], f"{p}.dq2d"),
            self.node("Slice", [f"{p}.dq2d", f"{p}.start", f"{p}.stop", f"{p}.last"], f"{p}.cut"),
            self.node("Reshape", [f"{p}.cut", f"{p}.shape"], f"{p}.dqx"),
            self._select(p, f"{p}.dqx", x),
        ]
        return nodes


def build(
    model: ir.Model,
    wbits: tuple[int, ...],
    fuse_outputs: bool,
    layout: WeightLayout,
    facts: Mapping[str, LayerFacts],
    store: WeightStore,
    spec: Any = None,
    dynamic: frozenset[str] = frozenset(),
    int8_input_blocks: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[onnx.ModelProto, list[LayerSites]]:
    """The fake-quant ModelProto with control inputs, and where each layer's controls are.

    ``wbits`` are the weight grids to prepare; ``dynamic`` names the layers whose input quantizer
    may take a dynamic range; ``int8_input_blocks`` the blocks of K in which some plan of a layer
    rounds its input to int8 (``LayerPlan.int8_input_block``). A weight's form depends on its bits
    and the target (``spec``), not on the activation bits, so each grid is planned once, at float
    activations.
    The graph is built on a clone of ``model``, which stays as it was; its big tensors are in
    ``store``, so the ModelProto is small."""
    int8_input_blocks = int8_input_blocks or {}
    model = model.clone()
    builder = _Builder(model, store)
    graph = model.graph
    layers = quantizable_layers(graph)
    if any(facts[layer.name].dynamic_lstm and layer.name in dynamic for layer in layers):
        model.opset_imports.setdefault("com.microsoft", 1)
    widen_to_float32(layers)
    # The float tensors the layers read, before any quantizer is put in front of them.
    activations = [layer.activation for layer in layers]
    sites: list[LayerSites] = []

    # Output quantizers first: they decide what every consumer of a layer's output sees.
    targets: dict[int, tuple[ir.Value, Site]] = {}
    for index, layer in enumerate(layers):
        target = output_target(layer) if fuse_outputs else None
        if target is None:
            continue
        site = Site(f"{PREFIX}.{index}.out", target.name or "", _clip_range(target))
        builder.site_inputs(site.prefix)
        uses = list(target.uses())
        nodes = builder.fake_quant(site.prefix, target, target)
        producer = target.producer()
        assert producer is not None and producer.graph is not None
        producer.graph.insert_after(producer, nodes)
        for use in uses:
            use.node.replace_input_with(use.idx, nodes[-1].outputs[0])
        if body_result(layer, target):
            return_instead(target, nodes[-1].outputs[0])
        targets[index] = (target, site)

    viewed = {id(target): builder[f"{site.prefix}.y"] for target, site in targets.values()}
    feeding = {id(target): index for index, (target, _) in targets.items()}
    for index, layer in enumerate(layers):
        node = layer.node
        # The layer's own graph (a body's, for a layer inside If/Loop/Scan): the controls and the
        # weight stacks stay main-graph inputs and initializers, which bodies read from the
        # enclosing scope.
        home = node.graph
        assert home is not None
        choice = builder.input(f"{PREFIX}.{index}.w", ir.DataType.INT64)
        scales: list[np.ndarray | None] = []
        planned = {
            bits: plan_layer(facts[layer.name], bits, FLOAT_BITS, spec=spec, layout=layout)
            for bits in wbits
        }
        blocks = {bits: plan.block for bits, plan in planned.items()}
        lstm_weights = (
            dynamic_lstm_weights(layer, facts[layer.name], spec)
            if facts[layer.name].dynamic_lstm and layer.name in dynamic
            else {}
        )
        for slot in (layer.weight_index, *layer.other_weight_indices):
            slot_scales: list[np.ndarray | None] = []
            entries = _weight_entries(layer, slot, wbits, blocks, slot_scales)
            stack_value = builder.stack(f"{PREFIX}.{index}.{slot}.wstack", entries, len(wbits) + 1)
            weight = node.inputs[slot]
            if weight is not None and isinstance(weight.const_value, ir.ExternalTensor):
                weight.const_value.release()  # read once: the stack holds it now
            scales = scales or slot_scales
            gather = builder.node(
                "Gather", [stack_value, choice], f"{choice.name}.{slot}.value", axis=0
            )
            gather.name = f"{choice.name}.{slot}.gather"
            home.insert_before(node, gather)
            node.replace_input_with(slot, gather.outputs[0])

        input_site, dynamic_switch = None, None
        activation = activations[index]
        if activation is not None and layer.activation_index is not None and _is_float(activation):
            input_site = Site(
                f"{PREFIX}.{index}.in", activation.name or "", _clip_range(activation)
            )
            builder.site_inputs(input_site.prefix)
            fallback = viewed.get(id(activation), activation)
            if layer.name in dynamic:
                dynamic_switch = f"{input_site.prefix}.dyn"
            nodes = builder.fake_quant(
                input_site.prefix, activation, fallback, dynamic_switch is not None
            )
            home.insert_before(node, nodes)
            node.replace_input_with(layer.activation_index, nodes[-1].outputs[0])

        kernel_switch = None
        if lstm_weights:
            assert layer.activation_index is not None
            source = node.inputs[layer.activation_index]
            assert source is not None
            kernel_switch = dynamic_lstm_branch(
                builder, f"{PREFIX}.{index}.lstm_kernel", layer, source, lstm_weights
            )
        bias = None
        if node.op_type in ("Conv", "Gemm") and len(node.inputs) >= 3:
            bias_array = constant_array(node.inputs[2])
            if bias_array is not None and bias_array.ndim == 1:
                bias = bias_array.astype(np.float32)
                bias_input = builder.input(f"{PREFIX}.{index}.bias", ir.DataType.FLOAT, bias.shape)
                node.replace_input_with(2, bias_input)
        int8_blocks = []
        for block in int8_input_blocks.get(layer.name, ()):
            assert layer.activation_index is not None
            prefix = f"{PREFIX}.{index}.a_int8.{block}"
            source = node.inputs[layer.activation_index]
            assert source is not None
            on = builder.input(f"{prefix}.on", ir.DataType.BOOL)
            k = facts[layer.name].kn
            assert k is not None
            nodes = builder.int8_blocks(prefix, source, k[0], block)
            home.insert_before(node, nodes)
            node.replace_input_with(layer.activation_index, nodes[-1].outputs[0])
            int8_blocks.append((block, on.name))
        output_site = targets[index][1] if index in targets else None
        upstream = feeding.get(id(activation)) if activation is not None else None
        sites.append(
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
                dynamic_switch,
                kernel_switch,
            )
        )
    _store_initializers(graph, store)
    return ir.to_proto(model), sites


def _store_initializers(graph: ir.Graph, store: WeightStore) -> None:
    """Drop the initializers nothing reads any more (the weights the stacks replaced) and move the
    other big ones into ``store``: the ModelProto then refers to every big tensor in one folder."""
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
            del graph.initializers[name]
        elif tensor is not None and store.streams(tensor.nbytes):
            if not store.holds(tensor):
                value.const_value = store.tensor(name, tensor.numpy())
                if isinstance(tensor, ir.ExternalTensor):
                    tensor.release()
