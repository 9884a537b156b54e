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

import os
import platform
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from onnx import TensorProto, helper, numpy_helper

from mpqc.hwspecs import load
from mpqc.hwspecs.errors import SpecError
from mpqc.hwspecs.fitting import Fit, Sample, fit_line, fit_roofline
from mpqc.hwspecs.loader import build_spec, deep_merge, locate, resolve, validate_document
from mpqc.hwspecs.spec import HardwareSpec
from mpqc.hwspecs.units import format_quantity

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


def time_model(model: onnx.ModelProto, threads: int, min_seconds: float, warmup: int = 3) -> float:
    """Median seconds of one run of ``model`` on onnxruntime's CPU provider.

    Runs repeat until ``min_seconds`` have passed (at least 5, at most 2000 runs): a 10 us kernel gets
    hundreds of samples and a 10 ms one a handful, so the median is stable on a busy machine either way.
    """
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
    samples: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 2000):
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


SPEC_KEY = {"float": "float", "u8s8": "w8a8", "s8s8": "w8a8_signed"}
"""Kernel precision -> the spec precision key its throughput is fitted for."""


def compute_kernels(quick: bool) -> list[Kernel]:
    """Compute-bound shapes (several MMACs, small working sets) plus tiny ones that expose the per-op cost."""
    kernels = [Kernel("Conv", 64, 64, 28), Kernel("MatMul", 512, 512, 64), Kernel("Conv", 4, 4, 4), Kernel("MatMul", 16, 16, 1)]
    if not quick:
        kernels += [Kernel("Conv", 128, 128, 14), Kernel("Conv", 32, 32, 56), Kernel("Conv", 128, 128, 28, kernel=1),
                    Kernel("MatMul", 768, 768, 128), Kernel("MatMul", 64, 64, 16)]
    return kernels


def memory_kernels(capacities: list[tuple[str, float]]) -> list[Kernel]:
    """One float matrix-vector product per memory level, its weights sized to land in that level.

    A product with one row does one MAC per weight loaded, so it is memory-bound on every CPU; the
    working set sits between the previous level's capacity and this one's (4x the largest bounded level
    for the unbounded one)."""
    kernels, previous = [], 0.0
    for _, capacity in capacities:
        target = 4 * previous if capacity == float("inf") else (capacity / 2 if previous == 0 else (previous * capacity) ** 0.5)
        side = max(16, int((target / 4) ** 0.5) // 16 * 16)
        kernels.append(Kernel("MatMul", side, side, 1))
        previous = capacity
    return kernels


def _cost_of_qdq(spec: HardwareSpec, kernel: Kernel) -> float:
    """The conversions the cost model charges a native quantized layer: Q on its input, DQ on its output."""
    return spec.overhead("QuantizeLinear").time(kernel.input_elems) + spec.overhead("DequantizeLinear").time(kernel.output_elems)


def base_for_machine(machine: str | None = None) -> str:
    """The bundled spec a profile of this machine extends: Arm -> arm_a72; x86 -> x86_avx512_vnni if the
    CPU reports VNNI, else x86_avx2."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("armv8"):
        return "arm_a72"
    if machine in ("x86_64", "amd64", "i686", "i386", "x86"):
        cpuinfo = Path("/proc/cpuinfo")
        flags = cpuinfo.read_text() if cpuinfo.is_file() else ""
        return "x86_avx512_vnni" if "avx512_vnni" in flags else "x86_avx2"
    raise SpecError("", "base", f"no bundled spec for machine type {machine!r}", "pass --base NAME with a bundled spec name")


def profile(base: str, threads: int, quick: bool, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure this machine and return a spec document extending ``base`` (see module docstring).

    Fits at ``threads`` threads; when that is more than one, the 1-thread fit is also recorded under
    ``provenance`` so the scaling is visible."""
    base_spec = load(base)
    min_seconds = 0.05 if quick else 0.3
    run_s = time_model(build_identity_model(), 1, min_seconds)
    log(f"session call: {run_s * 1e6:.1f} us")

    conversions: dict[str, tuple[float, float]] = {}
    sizes = [1_000, 300_000] if quick else [1_000, 10_000, 100_000, 1_000_000]
    for op in ("QuantizeLinear", "DequantizeLinear"):
        times = [time_model(build_convert_model(n, op), 1, min_seconds) for n in sizes]
        fixed, per_element = fit_line(sizes, times)
        conversions[op] = (max(fixed - run_s, 0.0), per_element)
        log(f"{op}: {conversions[op][0] * 1e6:.2f} us + {conversions[op][1] * 1e9:.3f} ns/element")
    qdq_spec = spec_from_document(deep_merge(resolve(locate(base)), {"overheads": {
        op: {"fixed": fixed, "per_element": per_el} for op, (fixed, per_el) in conversions.items()}}))

    capacities = [(level.name, level.capacity) for level in base_spec.memory]
    if quick:  # the unbounded level needs a working set of several times the last cache: slow to build
        capacities = [(name, capacity) for name, capacity in capacities if capacity != float("inf")]
    jobs = [(k, p) for k in compute_kernels(quick) for p in ("float", "u8s8", "s8s8")]
    jobs += [(k, p) for k in memory_kernels(capacities) for p in ("float", "u8s8")]
    thread_counts = sorted({1, threads})
    measurements: list[Measurement] = []
    for count in thread_counts:
        for kernel, precision in jobs:
            seconds = time_model(build_model(kernel, precision), count, min_seconds)
            measurements.append(Measurement(kernel, precision, count, seconds))
            log(f"{count} thread(s) {kernel.label():32s} {precision:5s} {seconds * 1e6:10.1f} us")

    order = list(SPEC_KEY)
    fits = {count: _fit(base_spec, qdq_spec, run_s, [m for m in measurements if m.threads == count]) for count in thread_counts}
    chosen = fits[threads]
    document: dict[str, Any] = {
        "base": base,
        "description": (
            f"Fitted by mpqc-hw profile on this machine ({platform.machine()}, {_cpu_name()}), "
            f"onnxruntime {ort.__version__}, {threads} thread(s): throughput, bandwidth and overheads measured; "
            f"energy, capacities, emulated paths and the op table inherited from {base}."
        ),
        "threads": threads,
        "precisions": {SPEC_KEY[p]: {"throughput": format_quantity(chosen.throughput[p], "throughput")} for p in order},
        "memory": {level: {"bandwidth": format_quantity(b, "bandwidth")} for level, b in chosen.bandwidth.items()},
        "overheads": {
            "default": {"fixed": format_quantity(chosen.overhead, "time")},
            **{op: {"fixed": format_quantity(f, "time"), "per_element": format_quantity(p, "time")} for op, (f, p) in conversions.items()},
        },
        "provenance": {
            "tool": "mpqc-hw profile" + (" --quick" if quick else ""),
            "onnxruntime": ort.__version__,
            "machine": platform.machine(),
            "seconds_per_kernel": min_seconds,
            "session_call_us": round(run_s * 1e6, 3),
            "fits": {
                f"threads_{count}": {
                    "overhead_us": round(fit.overhead * 1e6, 3),
                    "throughput_GMAC_s": {SPEC_KEY[p]: round(fit.throughput[p] / 1e9, 3) for p in order},
                    "bandwidth_GB_s": {l: round(b / 1e9, 3) for l, b in fit.bandwidth.items()},
                    "rms_log_error": round(fit.rms_log_error, 4),
                }
                for count, fit in fits.items()
            },
            "measurements_us": [
                f"{m.threads}t {m.kernel.label()} {m.precision}: {m.seconds * 1e6:.1f}" for m in measurements
            ],
        },
    }
    return document


def _fit(base_spec: HardwareSpec, qdq_spec: HardwareSpec, run_s: float, measurements: list[Measurement]) -> Fit:
    samples = []
    for m in measurements:
        moved = m.kernel.moved_bytes(m.precision)  # type: ignore[arg-type]
        qdq = 0.0 if m.precision == "float" else _cost_of_qdq(qdq_spec, m.kernel)
        samples.append(Sample(m.seconds, m.kernel.macs, moved, m.precision, base_spec.memory_level_for(moved).name, run_s + qdq))
    return fit_roofline(
        samples,
        prior_overhead=base_spec.overhead("Conv").fixed,
        prior_throughput={p: base_spec.precision(*_PAIR[p]).throughput for p in SPEC_KEY},
        prior_bandwidth={level.name: level.bandwidth for level in base_spec.memory},
    )


_PAIR = {"float": (None, None, False), "u8s8": (8, 8, False), "s8s8": (8, 8, True)}


def spec_from_document(document: dict[str, Any]) -> HardwareSpec:
    """A spec from an in-memory document (the base with the measured Q/DQ overheads merged in)."""
    path = Path("<profile>")
    validate_document(path, document)
    return build_spec(path, document)


def write_spec(document: dict[str, Any], path: Path, header: str) -> None:
    """Write ``document`` as spec YAML, atomically: a temp file in the same directory is written,
    validated by loading it back, then moved over ``path`` (an existing file is only ever replaced whole)."""
    path = Path(path)
    document = {"name": _name_for(path), **document}
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".yaml", dir=path.parent if str(path.parent) else ".")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        spec_doc = resolve(temp)
        validate_document(path, spec_doc)
        build_spec(path, spec_doc)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _name_for(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip("_.-")
    return name or "profiled"
