"""What onnxruntime really runs: its optimized graph, and each lowered layer's kernel in it.

The lowering plan names the kernel each layer should run (``Kernel``) and the cost pass prices it;
whether onnxruntime agrees is only known once it has fused the Q/DQ patterns. This module asks it:
``optimized_graph`` has onnxruntime's CPU provider optimize a model and save what it would run, in
a temporary folder that is always removed, and ``OptimizedGraph.runs`` finds a lowered layer in
that graph. It is the one rule for "the kernel onnxruntime runs for a layer": ``verify`` reports
it, and the plan's test (tests/passes/lib/test_plan.py) checks the plan against it.

The extended level is where onnxruntime's QDQ fusions (QLinearConv, QGemm, QLinearMatMul,
MatMulIntegerToFloat, DequantizeLinear -> MatMul into MatMulNBits) run; the ``all`` level adds
only layouts for this very CPU (NCHWc convs), which fuse no integer kernel and would make the
report, saved in the model, depend on the machine that compiled it.

A layer is found by its stored weight: the initializer behind the layer's DequantizeLinear (and a
unit-scale Mul), the int8 columns of a MatMulInteger (a dynamic range's layer ends in its Cast,
Mul and Add), or the packed weight of a MatMulNBits/GatherBlockQuantized, followed through
DequantizeLinear and Mul in the optimized graph to the node that consumes it. Where onnxruntime
repacked the weight into a new initializer, the node is the one that reads the layer's input (or
produces its output).
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import tempfile

import onnx
import onnx_ir as ir
import onnxruntime as ort

from mpqc.passes.lib.plan import Kernel

__all__ = ["INTEGER_KERNELS", "Fused", "OptimizedGraph", "optimized_graph"]

#: onnxruntime ops that compute a layer in integers (static and dynamic quantization).
INTEGER_KERNELS = frozenset(
    {
        "QLinearConv",
        "QGemm",
        "QLinearMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)
#: onnxruntime ops after its graph optimizations, by the plan's kernel that names them.
_ORT_OPS = {
    Kernel.DYNAMIC_INTEGER: frozenset({"DynamicQuantizeMatMul"}),
    Kernel.DYNAMIC_LSTM: frozenset({"DynamicQuantizeLSTM"}),
    Kernel.INTEGER: INTEGER_KERNELS,
    Kernel.MATMUL_NBITS: frozenset({"MatMulNBits"}),
    Kernel.GATHER_BLOCK_QUANTIZED: frozenset({"GatherBlockQuantized"}),
    Kernel.GATHER_INT8: frozenset({"Gather"}),
}
#: Ops between a stored weight and the layer that reads it.
_DEQUANTIZING = ("DequantizeLinear", "Mul")
#: The ops after a dynamic range's MatMulInteger (a layer lowered so ends in them).
_SCALING = ("Add", "Mul", "Cast")
#: Layers whose stored weight is their first input (the others read it second).
_TABLES = ("Gather", "GatherBlockQuantized")


@dataclasses.dataclass(frozen=True)
class Fused:
    """The kernel onnxruntime runs for a layer: the plan's name for it and onnxruntime's op."""

    kernel: Kernel
    op: str


def optimized_graph(model: bytes | str) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs for ``model`` (serialized bytes or a path), after
    its extended graph optimizations, without its tensors' data (what is read of it is which node
    reads and writes what); the files it writes live in a temporary folder, removed before this
    returns."""
    with tempfile.TemporaryDirectory(prefix="mpqc-ort-") as folder:
        path = pathlib.Path(folder) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(path)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return onnx.load(str(path), load_external_data=False)


class OptimizedGraph:
    """onnxruntime's optimized graph, indexed by the tensors each node reads and writes."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self._users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        self._producer: dict[str, onnx.NodeProto] = {}
        self._index(proto.graph)

    def _index(self, graph: onnx.GraphProto) -> None:
        """Every node of ``graph`` and of its bodies (names are unique across scopes)."""
        for node in graph.node:
            for name in dict.fromkeys(node.input):
                if name:
                    self._users[name].append(node)
            for name in node.output:
                self._producer[name] = node
            for attribute in node.attribute:
                for body in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                    self._index(body)

    def runs(self, layer: ir.Node) -> Fused | None:
        """What runs ``layer`` (a node of the lowered model holding a stored weight), or None
        when it cannot be told apart in the optimized graph (a weight or an input shared by
        several layers that onnxruntime rewrote)."""
        while layer.op_type in _SCALING and (producer := layer.inputs[0].producer()) is not None:
            layer = producer
        stored = layer.inputs[0 if layer.op_type in _TABLES else 1]
        while stored is not None and (producer := stored.producer()) is not None:
            if producer.op_type not in _DEQUANTIZING:
                break
            stored = producer.inputs[0]
        if stored is None:
            return None
        name, through_dequantize = stored.name, False
        while True:
            users = self._users.get(name or "", [])
            if users:
                user = self._pick(users, layer)
            else:  # onnxruntime repacked the weight: the node that reads the layer's input
                activation = layer.inputs[0] if layer.op_type not in _TABLES else layer.inputs[1]
                user = self._pick(self._users.get(activation.name or "", []), layer)
                through_dequantize = True
            if user is None:
                return None
            if users and user.op_type in _DEQUANTIZING:
                name, through_dequantize = user.output[0], True
                continue
            if user.op_type == "MatMulIntegerToFloat" and self._dynamic(user):
                return Fused(Kernel.DYNAMIC_INTEGER, user.op_type)
            return Fused(_kernel(user.op_type, through_dequantize), user.op_type)

    def _dynamic(self, node: onnx.NodeProto) -> bool:
        """Whether ``node``'s input levels come from a DynamicQuantizeLinear: the dynamic range's
        kernel when several layers share it (onnxruntime then keeps it apart from their
        MatMulIntegerToFloat instead of fusing DynamicQuantizeMatMul)."""
        producer = self._producer.get(node.input[0])
        return producer is not None and producer.op_type == "DynamicQuantizeLinear"

    def _pick(self, users: list[onnx.NodeProto], layer: ir.Node) -> onnx.NodeProto | None:
        """The one user, or among several the one that writes the layer's output."""
        if len(users) == 1:
            return users[0]
        producer = self._producer.get(layer.outputs[0].name or "")
        return producer if any(producer is user for user in users) else None


def _kernel(op: str, through_dequantize: bool) -> Kernel:
    for kernel, ops in _ORT_OPS.items():
        if op in ops and (kernel is not Kernel.GATHER_INT8 or not through_dequantize):
            return kernel
    return Kernel.DEQUANTIZE_FLOAT if through_dequantize else Kernel.FLOAT
