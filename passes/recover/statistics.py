"""What recovery needs to know about a layer's inputs, observed with onnxruntime on calibration
data.

For a linear layer two statistics of its input rows (``LinearView.rows``) are enough, kept per group
and summed sample by sample so memory does not grow with the data:

- ``Σ x xᵀ`` — the Hessian of the layer's output error, what GPTQ rounds against;
- ``Σ x`` and the row count — the input mean, which gives the layer's mean output exactly
  (``E[W x] = W E[x]``), and so the per-channel shift that bias correction removes.

The inputs come from one of two models:

- ``observe_float``: the float model, every layer input added as a graph output, one run per sample;
- ``observe_quantized``: the model as ``lower-qdq`` would emit it with some layers quantized (the
  recovered ones upstream, plainly rounded ones in the current stage), read at each layer's input
  *after* its own activation quantizer — exactly what the layer will see once shipped. This is
  GPTQ's "sequential" mode: later layers are reconstructed against the errors earlier ones left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes.infra.context import CompileContext
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.lib.runtime import external_folder, model_session, session_options
from mpqc.passes.lower.lower_qdq import LowerQDQPass
from mpqc.passes.recover.linear import LinearView

__all__ = ["InputStatistics", "observe_float", "observe_quantized"]

Sample = Mapping[str, np.ndarray]


@dataclasses.dataclass
class InputStatistics:
    """Running sums over one layer's input rows, per group (see the module docstring)."""

    total: np.ndarray  # (groups, cols)
    hessian: np.ndarray | None  # (groups, cols, cols), None when only the mean is wanted
    count: int = 0

    @classmethod
    def empty(cls, view: LinearView, with_hessian: bool) -> InputStatistics:
        groups, cols = view.groups, view.cols
        return cls(
            np.zeros((groups, cols)), np.zeros((groups, cols, cols)) if with_hessian else None
        )

    def add(self, rows: np.ndarray) -> None:
        """Add a batch of rows ``(positions, groups, cols)``."""
        self.total += rows.sum(axis=0, dtype=np.float64)
        self.count += rows.shape[0]
        if self.hessian is not None and rows.shape[1] == 1:
            self.hessian[0] += rows[:, 0].T @ rows[:, 0]
        elif self.hessian is not None:
            by_group = np.ascontiguousarray(rows.transpose(1, 0, 2))  # (groups, positions, cols)
            self.hessian += np.swapaxes(by_group, 1, 2) @ by_group

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)


def observe_float(
    model: ir.Model,
    views: Mapping[str, LinearView],
    samples: Sequence[Sample],
    with_hessian: bool,
    limit: int,
) -> dict[str, InputStatistics]:
    """Statistics of each named layer's input in the float model (``limit``: see
    ``LinearView.rows``)."""
    taps = {name: _input_name(view) for name, view in views.items()}
    return _observe(model, taps, views, samples, with_hessian, limit)


def observe_quantized(
    model: ir.Model,
    config: Mapping[str, tuple[int, int]],
    views: Mapping[str, LinearView],
    samples: Sequence[Sample],
    hw: object,
    layout: WeightLayout,
    limit: int,
) -> dict[str, InputStatistics]:
    """Statistics of each named layer's input in ``model`` lowered with ``config`` (the other layers
    float).

    The lowering runs on a copy; the caller's model is not touched.
    """
    lowered = model.clone()
    wanted = {view.layer.node.outputs[0].name: name for name, view in views.items()}
    for layer in quantizable_layers(lowered.graph):
        if layer.name in config:
            annotations.BITS.set(layer.node, annotations.layer_bits(config[layer.name]))
        else:
            annotations.BITS.remove(layer.node)
    LowerQDQPass(
        context=CompileContext(hw=hw), weight_only=layout.weight_only, block_size=layout.block_size
    )(lowered)
    taps: dict[str, str] = {}
    for node in lowered.graph:
        name = wanted.get(node.outputs[0].name) if node.outputs else None
        if name is not None:
            source = _kernel_input(node, views[name].layer.activation_index or 0)
            taps[name] = source.name or ""
    return _observe(lowered, taps, views, samples, True, limit)


def _kernel_input(node: ir.Node, index: int) -> ir.Value:
    """The float tensor the lowered layer ending in ``node`` reads: its input, or, for a dynamic
    range (MatMulInteger -> Cast -> Mul -> Add), the tensor DynamicQuantizeLinear quantizes on
    every run (its levels are not a float tensor to observe)."""
    while node.op_type in ("Add", "Mul", "Cast"):
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        if producer is None:
            break
        node = producer
    if node.op_type == "MatMulInteger":
        quantizer = node.inputs[0].producer()
        assert quantizer is not None
        source = quantizer.inputs[0]
    else:
        source = node.inputs[index]
    assert source is not None
    return source


def _session(proto: onnx.ModelProto, folder: str | None) -> ort.InferenceSession:
    options = session_options()
    # Let constant folding turn the lowered weights' DequantizeLinear into floats (the same
    # numbers): onnxruntime keeps them for its integer-kernel fusions otherwise, and reruns them
    # every sample.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return model_session(proto, folder, options=options)


def _keep_only_what_feeds(graph: onnx.GraphProto) -> None:
    """Drop the nodes the graph's outputs do not depend on: a stage observed early in the model runs
    only the model's prefix (onnxruntime would run every node of the graph for every sample)."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_names(node))
    del graph.node[:]
    graph.node.extend(reversed(kept))


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Every name read inside a node's subgraphs (If/Loop/Scan bodies may read outer values)."""
    names: set[str] = set()
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names


def _input_name(view: LinearView) -> str:
    value = view.layer.activation
    assert value is not None and value.name
    return value.name


def _observe(
    model: ir.Model,
    taps: Mapping[str, str],
    views: Mapping[str, LinearView],
    samples: Sequence[Sample],
    with_hessian: bool,
    limit: int,
) -> dict[str, InputStatistics]:
    proto = ir.to_proto(model)
    inputs = {value.name for value in proto.graph.input}
    fetch = sorted({tensor for tensor in taps.values() if tensor not in inputs})
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.ValueInfoProto(name=tensor) for tensor in fetch)
    _keep_only_what_feeds(proto.graph)
    runner = (
        _session(proto, external_folder(model)) if fetch else None
    )  # no session when every layer reads a model input
    stats = {name: InputStatistics.empty(views[name], with_hessian) for name in taps}
    for sample in samples:
        arrays = (
            dict(zip(fetch, runner.run(fetch, dict(sample)), strict=True))
            if runner is not None
            else {}
        )
        arrays.update({name: np.asarray(value) for name, value in sample.items() if name in inputs})
        for name, tensor in taps.items():
            stats[name].add(views[name].rows(np.asarray(arrays[tensor], np.float32), limit))
    return stats
