"""A plan in onnxruntime's quantizer terms, both ways (``--plan-out/--plan overrides.json``).

Teams that quantize with onnxruntime tune ``quantize_static`` by tensor with
``extra_options={"TensorQuantOverrides": ...}`` and, for weight-only MatMuls, by node with
``customized_weight_config``. This JSON holds exactly those, keyed as onnxruntime keys them::

    {"TensorQuantOverrides": {"conv1.weight": [{"quant_type": "QInt8"}],
                              "relu1_out": [{"quant_type": "QUInt16"}]},
     "customized_weight_config": {"fc_matmul": {"bits": 4, "group_size": 32}},
     "nodes_to_exclude": ["head"]}

A quantized layer gets an override for its weight and for the input whose quantizer it owns, a
weight-only MatMul its node's ``customized_weight_config``, a float layer (or one onnxruntime's
static quantizer cannot express: weights quantized, activations float) its name in
``nodes_to_exclude``. Quant types are written by their ``QuantType`` names, since JSON holds no
enums; :func:`quantize_static_arguments` turns the file into ``quantize_static``'s keywords.
Read back, a layer the file does not mention has mpqc's defaults (QInt8 weights, QUInt8
activations: w8a8). Names are those of the canonicalized model mpqc lowers
(``mpqc-opt MODEL -p canonicalize -o float.onnx`` writes it for onnxruntime's quantizer).

onnxruntime's quantizer does not enter If/Loop/Scan bodies (and refuses overrides of tensors it
cannot see there), so a written file says nothing of their layers and, read back, a body layer the
file does not name stays float. A file written by hand for mpqc may name them: a body layer by its
scoped name (``If_0/then/Conv_3``) in ``nodes_to_exclude`` or ``customized_weight_config``, its
weight or input tensor in ``TensorQuantOverrides`` (tensor names are unique across bodies), which
quantizes it like a main-graph layer. An unknown name is refused with the closest ones the model
has.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.ir import quantizable_layers
from mpqc.ir.layers import Layer
from mpqc.passes.choose.plan_file import PlanError, PlanFile
from mpqc.passes.lib.layout import DEFAULT_NBITS_BLOCK, WeightLayout
from mpqc.passes.lib.plan import WeightForm

__all__ = [
    "from_overrides",
    "overrides_layout",
    "overrides_text",
    "quantize_static_arguments",
    "to_overrides",
]

#: onnxruntime's QuantType names by operand kind and width.
_WEIGHT_TYPES = {4: "QInt4", 8: "QInt8", 16: "QInt16"}
_ACTIVATION_TYPES = {4: "QUInt4", 8: "QUInt8", 16: "QUInt16"}
#: ``quantize_static``'s defaults (``weight_type``, ``activation_type``).
_DEFAULT = Bits(8, 8)


def _node_name(layer: Layer) -> str:
    """How the overrides name a layer's node: onnxruntime's node name in the main graph, the
    scoped name (``If_0/then/Conv_3``) inside a body, where node names repeat."""
    return layer.name if layer.in_subgraph else layer.node.name or layer.name


def to_overrides(plan: PlanFile, model: ir.Model, path: str | pathlib.Path) -> dict[str, Any]:
    """The onnxruntime options that reproduce ``plan`` on ``model`` (the model the plan was made
    on: its tensor and node names)."""
    tensors: dict[str, list[dict[str, Any]]] = {}
    weight_config: dict[str, dict[str, int]] = {}
    excluded: list[str] = []
    for layer in quantizable_layers(model.graph, subgraphs=False):
        entry = plan.layers.get(layer.name)
        if entry is None:
            continue
        bits = entry.bits
        if bits.dynamic:
            raise PlanError(
                path,
                f"layer '{layer.name}': {bits} is quantize_dynamic's form, which "
                "quantize_static's overrides cannot state",
            )
        if entry.form is WeightForm.MATMUL_NBITS:
            weight_config[_node_name(layer)] = {
                "bits": bits.w,
                "group_size": plan.layout.nbits_block,
            }
            continue
        if bits.float_weights or bits.float_activations or entry.activation.startswith("float"):
            excluded.append(_node_name(layer))
            continue
        weight_type = _type(path, layer.name, "weight", bits.w, _WEIGHT_TYPES)
        tensors[layer.weight.name] = [{"quant_type": weight_type}]
        if layer.activation is not None:
            activation_type = _type(path, layer.name, "activation", bits.a, _ACTIVATION_TYPES)
            previous = tensors.get(layer.activation.name, [{}])[0].get("quant_type")
            # one input feeding two layers: onnxruntime quantizes it once, at the wider type
            if previous is None or _width(previous) < bits.a:
                tensors[layer.activation.name] = [{"quant_type": activation_type}]
    document: dict[str, Any] = {"TensorQuantOverrides": tensors}
    if weight_config:
        document["customized_weight_config"] = weight_config
    if excluded:
        document["nodes_to_exclude"] = excluded
    return document


def _type(path: Any, layer: str, kind: str, width: int, types: dict[int, str]) -> str:
    if width not in types:
        raise PlanError(
            path,
            f"layer '{layer}': onnxruntime's quantizer has no {width}-bit {kind} type "
            f"(it has {', '.join(map(str, types))})",
        )
    return types[width]


def _width(quant_type: str) -> int:
    return int("".join(c for c in quant_type if c.isdigit()))


def overrides_text(plan: PlanFile, model: ir.Model, path: str | pathlib.Path) -> str:
    """The overrides file for ``path``: :func:`to_overrides` as JSON."""
    return json.dumps(to_overrides(plan, model, path), indent=2, sort_keys=True) + "\n"


def from_overrides(
    path: str | pathlib.Path, model: ir.Model
) -> tuple[WeightLayout, dict[str, Bits]]:
    """The layout and bits per layer that onnxruntime options in ``path`` ask of ``model``."""
    try:
        document = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(path, f"cannot read the overrides: {exc}") from None
    if not isinstance(document, dict):
        raise PlanError(path, "expected a JSON object with TensorQuantOverrides")
    tensors = document.get("TensorQuantOverrides", {})
    weight_config = document.get("customized_weight_config", {})
    excluded = set(document.get("nodes_to_exclude", []))
    layers = quantizable_layers(model.graph)
    known_tensors = {
        value.name for layer in layers for value in (layer.weight, layer.activation) if value
    }
    known_nodes = {_node_name(layer) for layer in layers}
    for name in tensors:
        if name not in known_tensors:
            raise PlanError.unknown(path, "tensor", name, known_tensors)
    for name in [*weight_config, *excluded]:
        if name not in known_nodes:
            raise PlanError.unknown(path, "layer", name, known_nodes)
    layout = _layout(path, weight_config)
    bits = {}
    for layer in layers:
        node = _node_name(layer)
        if node in weight_config:
            bits[layer.name] = Bits(int(weight_config[node].get("bits", 4)), FLOAT_BITS)
        elif node in excluded or layout.weight_only or not _governed(layer, tensors):
            bits[layer.name] = Bits(FLOAT_BITS, FLOAT_BITS)
        else:
            w = _read_width(path, tensors, layer.weight.name, _DEFAULT.w)
            a = _read_width(
                path, tensors, layer.activation.name if layer.activation else "", _DEFAULT.a
            )
            bits[layer.name] = Bits(w, a)
    return layout, bits


def _governed(layer: Layer, tensors: dict[str, Any]) -> bool:
    """Whether the overrides quantize ``layer`` unless they exclude it: every layer of the main
    graph, as onnxruntime's quantizer does, and a body layer only where a tensor override names
    its weight or input (that quantizer does not enter bodies)."""
    if not layer.in_subgraph:
        return True
    return any(
        value is not None and value.name in tensors for value in (layer.weight, layer.activation)
    )


def overrides_layout(path: str | pathlib.Path) -> WeightLayout:
    """The layout the overrides in ``path`` ask for: MatMulNBits when they configure any."""
    try:
        document = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(path, f"cannot read the overrides: {exc}") from None
    if not isinstance(document, dict):
        raise PlanError(path, "expected a JSON object with TensorQuantOverrides")
    return _layout(path, document.get("customized_weight_config", {}))


def _layout(path: Any, weight_config: dict[str, Any]) -> WeightLayout:
    group_sizes = {int(c.get("group_size", DEFAULT_NBITS_BLOCK)) for c in weight_config.values()}
    if len(group_sizes) > 1:
        raise PlanError(path, "customized_weight_config: mpqc lowers one group_size per model")
    block = group_sizes.pop() if group_sizes else 0
    return WeightLayout(bool(weight_config), 0 if block == DEFAULT_NBITS_BLOCK else block)


def _read_width(path: Any, tensors: dict[str, Any], name: str, default: int) -> int:
    overrides = tensors.get(name)
    if not overrides:
        return default
    quant_type = overrides[0].get("quant_type") if isinstance(overrides[0], dict) else None
    if quant_type is None:
        return default
    if quant_type not in {*_WEIGHT_TYPES.values(), *_ACTIVATION_TYPES.values()}:
        raise PlanError(path, f"tensor '{name}': quant_type {quant_type!r} is not one mpqc lowers")
    return _width(quant_type)


def quantize_static_arguments(path: str | pathlib.Path) -> dict[str, Any]:
    """``quantize_static``'s keywords for the overrides in ``path``: mpqc's default types (QInt8
    weights, QUInt8 activations), ``nodes_to_exclude`` and
    ``extra_options={"TensorQuantOverrides": ...}`` with ``QuantType`` values.

    The names are those of the model mpqc lowered, after ``canonicalize`` (a BatchNorm folded
    into its Conv gives a new weight): quantize that model, which
    ``mpqc-opt MODEL -p canonicalize -o float.onnx`` writes.
    """
    from onnxruntime.quantization import QuantType

    document = json.loads(pathlib.Path(path).read_text())
    overrides = {
        name: [{**item, "quant_type": QuantType[item["quant_type"]]} for item in items]
        for name, items in document.get("TensorQuantOverrides", {}).items()
    }
    return {
        # mpqc's own defaults (onnxruntime's activation default is signed)
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "nodes_to_exclude": list(document.get("nodes_to_exclude", [])),
        "extra_options": {"TensorQuantOverrides": overrides},
    }
