"""What the sensitivity passes cost: wall time against onnxruntime's quantizer and on a large model.

``speed`` times sensitivity-output (every layer x the weight bit-widths) against onnxruntime's
``quant_pre_process`` + ``quantize_static`` on the same model and calibration data, alternating
(ORT, mpqc, ORT, mpqc), with the load average: the machine is shared, so only same-run ratios mean
anything. ``data_free_seconds`` times the data-free passes on a 25M-parameter model.  Both are run
through ``python -m bench.sensitivity --speed MODEL`` / ``--data-free``.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

import mpqc.ir as mir
from mpqc.passes import CalibrationData, CompileContext, build_pipeline


def timed_pass(model: ir.Model, context: CompileContext, text: str) -> float:
    """Wall seconds of running the one pass ``text`` on ``model``."""
    (step,) = build_pipeline(text, context)
    start = time.perf_counter()
    step(model)
    return time.perf_counter() - start


def speed(name: str, rounds: int, wbits: Sequence[int]) -> str:
    """sensitivity-output (all layers x ``wbits``) against quant_pre_process +
    quantize_static."""
    from bench.baselines import QuantizeRequest, ort_static
    from bench.models import get

    bench_model = get({"ppocr": "ppocr-rec"}.get(name, name))
    calibration = [dict(x) for x in bench_model.task().calibration_inputs]
    lines = [
        f"### speed: {bench_model.name}, {len(calibration)} calibration samples",
        "",
        "| round | quantize_static s | sensitivity-output s | ratio | load |",
        "|---|---|---|---|---|",
    ]
    for index in range(rounds):
        with tempfile.TemporaryDirectory() as scratch:
            folder = pathlib.Path(scratch)
            request = QuantizeRequest(
                bench_model.float_path(), calibration, folder, folder / "q.onnx"
            )
            start = time.perf_counter()
            ort_static("u8")(request)
            ort_seconds = time.perf_counter() - start
        model = mir.load(bench_model.float_path())
        context = CompileContext(calibration=CalibrationData(tuple(calibration)))
        for step in build_pipeline("canonicalize", context):
            step(model)
        ours = timed_pass(
            model,
            context,
            f"sensitivity-output{{wbits=[{','.join(map(str, wbits))}],samples={len(calibration)}}}",
        )
        lines.append(
            f"| {index + 1} | {ort_seconds:.1f} | {ours:.1f} | {ours / ort_seconds:.1f}× "
            f"| {os.getloadavg()[0]:.1f} |"
        )
    return "\n".join(lines)


def data_free_seconds(parameters: int = 25_000_000) -> str:
    """Wall time of the data-free passes on a stack of Gaussian MatMuls holding ``parameters``
    weights."""
    width = 2048
    count = max(1, round(parameters / width / width))
    text = "\n".join(f"  h{i + 1} = MatMul(h{i}, w{i})" for i in range(count))
    proto = onnx.parser.parse_model(
        f'<ir_version: 10, opset_import: ["" : 17]>\n'
        f"wide (float[1,{width}] h0) => (float[1,{width}] h{count}) {{\n{text}\n}}"
    )
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend(
        onnx.numpy_helper.from_array(rng.standard_normal((width, width), np.float32), f"w{i}")
        for i in range(count)
    )
    model = ir.from_proto(proto)
    lines = [
        f"### data-free passes on {count * width * width / 1e6:.1f}M parameters "
        f"({count} MatMuls {width}x{width}), 4 weight widths",
        "",
    ]
    for text in ("sensitivity-entropy", "sensitivity-weight-error"):
        runs = []
        for _ in range(3):
            cpu = time.process_time()
            wall = timed_pass(model, CompileContext(), text)
            runs.append((wall, time.process_time() - cpu))
        wall, cpu = min(runs)
        lines.append(
            f"- {text}: {wall:.2f} s wall, {cpu:.2f} s CPU (best of 3; single-threaded numpy, "
            "so CPU time is what an idle core takes; "
            f"load {os.getloadavg()[0]:.1f})"
        )
    return "\n".join(lines)
