"""Measure onnxruntime on this machine with micro-kernels (the data ``mpqc-hw profile`` fits a spec to).

Each kernel is a one-op ONNX model built with ``onnx.helper``: a Conv or MatMul whose weight is a
constant, in float or as the QDQ pattern mpqc's lowering emits (QuantizeLinear on the activation input,
per-channel symmetric int8 weights behind DequantizeLinear, QuantizeLinear/DequantizeLinear on the
output) so onnxruntime fuses it to its integer kernel exactly as it would in a lowered model.  Standalone
QuantizeLinear/DequantizeLinear models measure the conversion overheads on their own.

Timing is the median of repeated runs after warm-up, on sessions with a fixed intra-op thread count and
sequential execution, so the numbers describe one inference on ``threads`` cores.  This module imports
onnx and onnxruntime; the cost model never does.
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

OPSET = 21
"""Opset 21 is the first with INT4/UINT16 QDQ, which the emulated-path kernels use."""

KernelPrecision = Literal["float", "u8s8", "s8s8", "u16s8", "u8s4"]
"""Activation type and weight type of a kernel: ``u8s8`` = uint8 activations x int8 weights."""

_ACT_TYPE = {"u8s8": TensorProto.UINT8, "s8s8": TensorProto.INT8, "u16s8": TensorProto.UINT16, "u8s4": TensorProto.UINT8}
_WEIGHT_TYPE = {"u8s8": (TensorProto.INT8, 127), "s8s8": (TensorProto.INT8, 127), "u16s8": (TensorProto.INT8, 127), "u8s4": (TensorProto.INT4, 7)}
_ACT_BITS = {"float": 32, "u8s8": 8, "s8s8": 8, "u16s8": 16, "u8s4": 8}
_WEIGHT_BITS = {"float": 32, "u8s8": 8, "s8s8": 8, "u16s8": 8, "u8s4": 4}


@dataclass(frozen=True)
class Kernel:
    """One micro-kernel shape: ``Conv`` on [1, c_in, size, size] with a k x k kernel, or ``MatMul``
    [m, k] x [k, n] (``c_in``/``c_out``/``size``/``kernel`` read as m, k, n, unused for MatMul)."""

    op_type: Literal["Conv", "MatMul"]
    c_in: int
    c_out: int
    size: int
    kernel: int = 3

    @property
    def input_shape(self) -> list[int]:
        if self.op_type == "Conv":
            return [1, self.c_in, self.size, self.size]
        return [self.size, self.c_in]

    @property
    def weight_shape(self) -> list[int]:
        if self.op_type == "Conv":
            return [self.c_out, self.c_in, self.kernel, self.kernel]
        return [self.c_in, self.c_out]

    @property
    def output_elems(self) -> int:
        return self.c_out * (self.size * self.size if self.op_type == "Conv" else self.size)

    @property
    def input_elems(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def weight_params(self) -> int:
        return int(np.prod(self.weight_shape))

    @property
    def macs(self) -> int:
        if self.op_type == "Conv":
            return self.output_elems * self.c_in * self.kernel * self.kernel
        return self.size * self.c_in * self.c_out

    def moved_bytes(self, precision: KernelPrecision) -> int:
        act = _ACT_BITS[precision] / 8 * (self.input_elems + self.output_elems)
        return int(act + _WEIGHT_BITS[precision] / 8 * self.weight_params)

    def label(self) -> str:
        if self.op_type == "Conv":
            return f"Conv{self.kernel}x{self.kernel} {self.c_in}->{self.c_out} @{self.size}x{self.size}"
        return f"MatMul {self.size}x{self.c_in}x{self.c_out}"


def _weight_and_scale(kernel: Kernel, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    weight = rng.standard_normal(kernel.weight_shape).astype(np.float32) * 0.05
    axis_reduce = tuple(range(1, weight.ndim)) if kernel.op_type == "Conv" else (0,)
    scale = np.abs(weight).max(axis=axis_reduce).astype(np.float32) / 127.0
    return weight, scale


def build_model(kernel: Kernel, precision: KernelPrecision, seed: int = 0) -> onnx.ModelProto:
    """The one-op model for ``kernel`` at ``precision`` (float, or the QDQ pattern onnxruntime fuses)."""
    rng = np.random.default_rng(seed)
    weight, scale = _weight_and_scale(kernel, rng)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, kernel.input_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes, inits = [], []
    op_inputs = ["x", "w"]
    if precision == "float":
        inits.append(numpy_helper.from_array(weight, "w"))
        nodes.append(helper.make_node(kernel.op_type, op_inputs, ["y"]))
    else:
        act_type = _ACT_TYPE[precision]
        weight_type, qmax = _WEIGHT_TYPE[precision]
        channel_axis = 0 if kernel.op_type == "Conv" else 1
        shape = [-1 if i == channel_axis else 1 for i in range(weight.ndim)]
        wq = np.clip(np.round(weight / scale.reshape(shape)), -qmax - 1, qmax).astype(np.int8)
        w_tensor = helper.make_tensor("w_q", weight_type, wq.shape, wq.flatten().tolist())
        inits += [
            w_tensor,
            numpy_helper.from_array(scale, "w_scale"),
            numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
            helper.make_tensor("a_zp", act_type, [], [128 if act_type == TensorProto.UINT8 else 32768 if act_type == TensorProto.UINT16 else 0]),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zp"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zp"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], axis=channel_axis),
            helper.make_node(kernel.op_type, ["x_dq", "w"], ["y_f"]),
            helper.make_node("QuantizeLinear", ["y_f", "a_scale", "a_zp"], ["y_q"]),
            helper.make_node("DequantizeLinear", ["y_q", "a_scale", "a_zp"], ["y"]),
        ]
    graph = helper.make_graph(nodes, f"{kernel.op_type}_{precision}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def build_convert_model(elements: int, op: Literal["QuantizeLinear", "DequantizeLinear"]) -> onnx.ModelProto:
    """A standalone QuantizeLinear (float -> uint8) or DequantizeLinear (uint8 -> float) of ``elements``."""
    in_type, out_type = (TensorProto.FLOAT, TensorProto.UINT8) if op == "QuantizeLinear" else (TensorProto.UINT8, TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "s", "z"], ["y"])],
        op,
        [helper.make_tensor_value_info("x", in_type, [elements])],
        [helper.make_tensor_value_info("y", out_type, [elements])],
        [numpy_helper.from_array(np.array(0.02, np.float32), "s"), helper.make_tensor("z", TensorProto.UINT8, [], [128])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def time_model(model: onnx.ModelProto, threads: int, repeats: int, warmup: int = 3) -> float:
    """Median seconds of one run of ``model`` on onnxruntime's CPU provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed_info = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in feed_info.shape]
    rng = np.random.default_rng(0)
    if feed_info.type == "tensor(uint8)":
        feed = rng.integers(0, 255, shape, dtype=np.uint8)
    else:
        feed = rng.standard_normal(shape).astype(np.float32)
    feeds = {feed_info.name: feed}
    for _ in range(warmup):
        session.run(None, feeds)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@dataclass(frozen=True)
class Measurement:
    kernel: Kernel
    precision: str
    threads: int
    seconds: float
