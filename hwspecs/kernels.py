"""Micro-kernels that measure onnxruntime on this machine (what ``mpqc-hw profile`` fits a spec to).

A kernel is a Conv or MatMul layer with a constant weight, built with ``onnx.helper`` in float or as
the QDQ pattern mpqc's lowering emits (QuantizeLinear/DequantizeLinear on the activation input,
per-channel symmetric int8 or int4 weights behind DequantizeLinear, QuantizeLinear/DequantizeLinear
on the output), so onnxruntime fuses it to its integer kernel — or fails to, for the emulated types
— exactly as it would in a lowered model.  Layers chain into small networks for checking how
configurations rank.  Standalone QuantizeLinear/DequantizeLinear models measure the conversion
overheads on their own.

Timing is the median of repeated runs after warm-up, on sessions with a fixed intra-op thread count
and sequential execution, so the numbers describe one inference on ``threads`` cores.  This module
imports onnx and onnxruntime; the cost model never does.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mpqc.hwspecs.cost import LayerDesc

OPSET = 21
"""Opset 21 is the first with INT4/UINT16 QDQ, which the emulated-path kernels use."""

KernelPrecision = Literal["float", "u8s8", "s8s8", "u16s8", "u8s4"]
"""Activation type and weight type of a kernel: ``u8s8`` = uint8 activations x int8 weights."""

FUSED: frozenset[KernelPrecision] = frozenset({"u8s8", "s8s8"})
"""Kernel precisions onnxruntime runs as integer kernels (8-bit activations and weights)."""

_ACT_TYPE = {
    "u8s8": TensorProto.UINT8,
    "s8s8": TensorProto.INT8,
    "u16s8": TensorProto.UINT16,
    "u8s4": TensorProto.UINT8,
}
_WEIGHT_TYPE = {
    "u8s8": (TensorProto.INT8, 127),
    "s8s8": (TensorProto.INT8, 127),
    "u16s8": (TensorProto.INT8, 127),
    "u8s4": (TensorProto.INT4, 7),
}


@dataclass(frozen=True)
class Kernel:
    """One micro-kernel shape: ``Conv`` on [1, c_in, size, size] with a k x k kernel, ``groups``
    groups and "same" padding, or ``MatMul`` [size, c_in] x [c_in, c_out] (``kernel`` and ``groups``
    unused)."""

    op_type: Literal["Conv", "MatMul"]
    c_in: int
    c_out: int
    size: int
    kernel: int = 3
    groups: int = 1

    @property
    def depthwise(self) -> bool:
        return self.op_type == "Conv" and self.groups > 1 and self.groups == self.c_in

    @property
    def input_shape(self) -> list[int]:
        if self.op_type == "Conv":
            return [1, self.c_in, self.size, self.size]
        return [self.size, self.c_in]

    @property
    def weight_shape(self) -> list[int]:
        if self.op_type == "Conv":
            return [self.c_out, self.c_in // self.groups, self.kernel, self.kernel]
        return [self.c_in, self.c_out]

    @property
    def output_shape(self) -> list[int]:
        if self.op_type == "Conv":
            return [1, self.c_out, self.size, self.size]
        return [self.size, self.c_out]

    @property
    def output_elems(self) -> int:
        return int(np.prod(self.output_shape))

    @property
    def input_elems(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def weight_params(self) -> int:
        return int(np.prod(self.weight_shape))

    @property
    def macs(self) -> int:
        if self.op_type == "Conv":
            return self.output_elems * (self.c_in // self.groups) * self.kernel * self.kernel
        return self.size * self.c_in * self.c_out

    def label(self) -> str:
        if self.op_type == "Conv":
            kind = " depthwise" if self.depthwise else ""
            return (
                f"Conv{self.kernel}x{self.kernel}{kind} {self.c_in}->{self.c_out} "
                f"@{self.size}x{self.size}"
            )
        return f"MatMul {self.size}x{self.c_in}x{self.c_out}"


def _layer(
    kernel: Kernel,
    precision: KernelPrecision,
    prefix: str,
    src: str,
    dst: str,
    rng: np.random.Generator,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers of one layer ``src -> dst``: the float op, or mpqc's QDQ pattern
    around it."""
    weight = rng.standard_normal(kernel.weight_shape).astype(np.float32) * 0.05
    attrs = (
        {"pads": [kernel.kernel // 2] * 4, "group": kernel.groups}
        if kernel.op_type == "Conv"
        else {}
    )
    if precision == "float":
        init = numpy_helper.from_array(weight, f"{prefix}w")
        return [helper.make_node(kernel.op_type, [src, f"{prefix}w"], [dst], **attrs)], [init]
    act_type = _ACT_TYPE[precision]
    weight_type, qmax = _WEIGHT_TYPE[precision]
    channel_axis = 0 if kernel.op_type == "Conv" else 1
    reduce_axes = tuple(i for i in range(weight.ndim) if i != channel_axis)
    scale = (np.abs(weight).max(axis=reduce_axes) / qmax).astype(np.float32)
    shape = [-1 if i == channel_axis else 1 for i in range(weight.ndim)]
    wq = np.clip(np.round(weight / scale.reshape(shape)), -qmax - 1, qmax).astype(np.int64)
    zero_point = {TensorProto.UINT8: 128, TensorProto.UINT16: 32768}.get(act_type, 0)
    p = prefix
    inits = [
        helper.make_tensor(f"{p}w_q", weight_type, wq.shape, wq.flatten().tolist()),
        numpy_helper.from_array(scale, f"{p}w_scale"),
        numpy_helper.from_array(np.array(0.02, np.float32), f"{p}a_scale"),
        helper.make_tensor(f"{p}a_zp", act_type, [], [zero_point]),
    ]
    activation = [f"{p}a_scale", f"{p}a_zp"]
    # Like mpqc's lowering, only the pairs onnxruntime fuses into an integer kernel get an output
    # quantizer.
    output = f"{p}y_f" if precision in FUSED else dst
    nodes = [
        helper.make_node("QuantizeLinear", [src, *activation], [f"{p}x_q"]),
        helper.make_node("DequantizeLinear", [f"{p}x_q", *activation], [f"{p}x_dq"]),
        helper.make_node(
            "DequantizeLinear", [f"{p}w_q", f"{p}w_scale"], [f"{p}w"], axis=channel_axis
        ),
        helper.make_node(kernel.op_type, [f"{p}x_dq", f"{p}w"], [output], **attrs),
    ]
    if precision in FUSED:
        nodes += [
            helper.make_node("QuantizeLinear", [output, *activation], [f"{p}y_q"]),
            helper.make_node("DequantizeLinear", [f"{p}y_q", *activation], [dst]),
        ]
    return nodes, inits


def build_chain(layers: list[tuple[Kernel, KernelPrecision]], seed: int = 0) -> onnx.ModelProto:
    """A chain of layers, each in float or in its own QDQ island (how mpqc lowers a mixed
    configuration).  Shapes must chain: Conv layers keep their spatial size ("same" padding)."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for index, (kernel, precision) in enumerate(layers):
        src = "x" if index == 0 else f"t{index}"
        dst = "y" if index == len(layers) - 1 else f"t{index + 1}"
        layer_nodes, layer_inits = _layer(kernel, precision, f"l{index}_", src, dst, rng)
        nodes += layer_nodes
        inits += layer_inits
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, layers[0][0].input_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, layers[-1][0].output_shape)
    graph = helper.make_graph(nodes, "chain", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def build_model(kernel: Kernel, precision: KernelPrecision, seed: int = 0) -> onnx.ModelProto:
    """The one-layer model for ``kernel`` at ``precision`` (float, or the QDQ pattern onnxruntime
    fuses)."""
    return build_chain([(kernel, precision)], seed)


def build_convert_model(
    elements: int, op: Literal["QuantizeLinear", "DequantizeLinear"]
) -> onnx.ModelProto:
    """A standalone QuantizeLinear (float -> uint8) or DequantizeLinear (uint8 -> float) of
    ``elements`` values."""
    in_type, out_type = (
        (TensorProto.FLOAT, TensorProto.UINT8)
        if op == "QuantizeLinear"
        else (TensorProto.UINT8, TensorProto.FLOAT)
    )
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "s", "z"], ["y"])],
        op,
        [helper.make_tensor_value_info("x", in_type, [elements])],
        [helper.make_tensor_value_info("y", out_type, [elements])],
        [
            numpy_helper.from_array(np.array(0.02, np.float32), "s"),
            helper.make_tensor("z", TensorProto.UINT8, [], [128]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


ELEMENTWISE = (
    "Clip",
    "HardSwish",
    "Sigmoid",
    "Mul",
    "Add",
    "LayerNormalization",
    "Softmax",
    "Erf",
    "Gelu",
)
"""Float ops the cost model charges per element: the narrow-grid Clip, activations an integer kernel
does not fuse, the scale multiply of gathered embedding rows, and the ops between a transformer's
MatMuls (LayerNormalization, Softmax, GELU as Erf or its own op), which are more than a light
elementwise pass."""

#: The row an op that normalizes along the last axis (LayerNormalization, Softmax) works on: it
#: divides every size ``mpqc-hw profile`` measures.
_ROW = 200


def build_elementwise_model(elements: int, op: str) -> onnx.ModelProto:
    """One float op over ``elements`` values (binary ops take a constant second operand;
    LayerNormalization and Softmax normalize rows of ``_ROW``)."""
    extra = {
        "Clip": [
            numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
        ],
        "Mul": [numpy_helper.from_array(np.array(0.5, np.float32), "c")],
        "Add": [numpy_helper.from_array(np.array(0.5, np.float32), "c")],
        "LayerNormalization": [
            numpy_helper.from_array(np.ones(_ROW, np.float32), "scale"),
            numpy_helper.from_array(np.zeros(_ROW, np.float32), "bias"),
        ],
    }.get(op, [])
    shape = [elements // _ROW, _ROW] if op in ("LayerNormalization", "Softmax") else [elements]
    graph = helper.make_graph(
        [helper.make_node(op, ["x", *(t.name for t in extra)], ["y"])],
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        extra,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def _session(
    model: onnx.ModelProto | bytes, threads: int, feeds: dict[str, np.ndarray] | None
) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    serialized = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    if feeds is not None:
        return session, feeds
    feed_info = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in feed_info.shape]
    rng = np.random.default_rng(0)
    if feed_info.type == "tensor(uint8)":
        feed = rng.integers(0, 255, shape, dtype=np.uint8)
    else:
        feed = rng.standard_normal(shape).astype(np.float32)
    return session, {feed_info.name: feed}


@dataclass(frozen=True)
class Timing:
    """Median seconds of one run: wall clock, and CPU time of the calling thread.

    With one intra-op thread onnxruntime runs the whole inference on the calling thread, so its CPU
    time is what one inference costs on a core of its own; on a shared machine the wall clock adds
    the time spent waiting for a core."""

    wall_s: float
    cpu_s: float
    #: How many runs the medians are of.
    runs: int = 0


def measure_models(
    models: list[onnx.ModelProto | bytes],
    threads: int,
    min_seconds: float,
    warmup: int = 3,
    feeds: dict[str, np.ndarray] | None = None,
) -> list[Timing]:
    """Median wall and thread-CPU seconds of one run of each model on onnxruntime's CPU provider,
    measured interleaved.

    Runs go round-robin over the models until ``min_seconds`` per model have passed (at least 5, at
    most 2000 rounds), so a burst of load from another process slows every model alike instead of
    whichever one happened to be running: on a shared machine that, not the repeat count, is what
    keeps the ranking of the measured models stable.  ``feeds`` are the inputs every model runs on
    (the models must share their inputs); without them each model gets a seeded random first input.
    """
    sessions = [_session(model, threads, feeds) for model in models]
    for session, inputs in sessions:
        for _ in range(warmup):
            session.run(None, inputs)
    wall: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    deadline = time.perf_counter() + min_seconds * len(sessions)
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 2000):
        for index, (session, inputs) in enumerate(sessions):
            start, start_cpu = time.perf_counter(), time.thread_time()
            session.run(None, inputs)
            cpu[index].append(time.thread_time() - start_cpu)
            wall[index].append(time.perf_counter() - start)
        rounds += 1
    return [
        Timing(statistics.median(w), statistics.median(c), len(w))
        for w, c in zip(wall, cpu, strict=True)
    ]


def time_models(
    models: list[onnx.ModelProto | bytes],
    threads: int,
    min_seconds: float,
    warmup: int = 3,
    feeds: dict[str, np.ndarray] | None = None,
) -> list[float]:
    """Seconds of one run of each model (see ``measure_models``): thread CPU time with one thread,
    where it is immune to other processes' load, and wall clock with several, where the caller's CPU
    time would miss the other threads' work."""
    timings = measure_models(models, threads, min_seconds, warmup, feeds)
    return [t.cpu_s if threads == 1 else t.wall_s for t in timings]


def time_model(model: onnx.ModelProto, threads: int, min_seconds: float) -> float:
    """Median seconds of one run of ``model`` (see ``time_models``)."""
    return time_models([model], threads, min_seconds)[0]


def build_identity_model() -> onnx.ModelProto:
    """A one-element Identity: its run time is the session-call cost every measurement includes."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


KERNEL_PAIR: dict[str, tuple[int | None, int | None, bool]] = {
    "float": (None, None, False),
    "u8s8": (8, 8, False),
    "s8s8": (8, 8, True),
    "u16s8": (8, 16, False),
    "u8s4": (4, 8, False),
}
"""Kernel precision -> (weight bits, activation bits, signed activations) in cost-model terms."""


def layer_desc(kernel: Kernel, name: str) -> LayerDesc:
    """The cost model's view of a kernel."""
    return LayerDesc(
        name,
        kernel.op_type,
        macs=kernel.macs,
        weight_params=kernel.weight_params,
        input_elems=kernel.input_elems,
        output_elems=kernel.output_elems,
        kernel=(kernel.kernel, kernel.kernel) if kernel.op_type == "Conv" else None,
        groups=kernel.groups,
        depthwise=kernel.depthwise,
        c_in=kernel.c_in,
        c_out=kernel.c_out,
    )
