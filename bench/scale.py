"""``python -m bench.scale``: how mpqc's time and memory grow with the model (issue 14, "Scale").

Synthetic models built here, in a temporary folder, with seeded weights: chains of 3x3 convolutions
(16 channels, 16x16 maps) and of square MatMuls, from a hundred layers to thousands, and a few wide
MatMul chains whose weights reach hundreds of megabytes or pass the protobuf limit (2 GB, then they
live in an external data file). Each model is quantized by ``mpqc --uniform w8a8``, by mpqc's
default pipeline under a size budget (``--max-size 0.5x``: calibrate, output sensitivity, ILP
search, recover, lower, verify) and by onnxruntime's ``quantize_static`` (QDQ, per-channel int8
weights, MinMax), each in its own child process, one at a time, on the same calibration samples.

Per run: wall seconds, CPU seconds (user + system: on a shared machine the wall time mostly says
how busy the others were) and the peak resident memory of the child process (``ru_maxrss`` from
``wait4``, which covers the worker processes it waited for too) against the model's weight bytes.
A run whose process tree passes ``--rss-cap`` is killed and reported as such, so a regression does
not take the machine down. Results go to ``bench/results/scale.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

#: Calibration samples each tool sees.
SAMPLES = 8
#: Rows of a MatMul chain's input (a small batch of tokens).
ROWS = 4
#: Conv chains: channels and spatial size.
CHANNELS, SIDE = 16, 16

RESULTS = pathlib.Path(__file__).parent / "results" / "scale.json"


@dataclasses.dataclass(frozen=True)
class Shape:
    """One synthetic model: ``kind`` conv or matmul, ``layers`` deep, ``width`` (MatMul's side)."""

    kind: str
    layers: int
    width: int = 0
    external: bool = False

    @property
    def name(self) -> str:
        wide = f"x{self.width}" if self.kind == "matmul" else ""
        return f"{self.kind}{self.layers}{wide}{'-external' if self.external else ''}"

    @property
    def weight_bytes(self) -> int:
        per_layer = CHANNELS * CHANNELS * 9 if self.kind == "conv" else self.width**2
        return 4 * per_layer * self.layers


def _tensor(name: str, array: np.ndarray, data: pathlib.Path | None) -> TensorProto:
    """An initializer with raw data, or appended to the external ``data`` file (streamed: the
    builder never holds more than one layer's weights)."""
    if data is None:
        return onnx.numpy_helper.from_array(array, name)
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
    with data.open("ab") as sink:
        offset = sink.tell()
        sink.write(array.tobytes())
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data.name), ("offset", offset), ("length", array.nbytes)):
        tensor.external_data.add(key=key, value=str(value))
    return tensor


def build(shape: Shape, folder: pathlib.Path) -> pathlib.Path:
    """Write ``shape``'s model into ``folder`` (weights external when ``shape.external``)."""
    rng = np.random.default_rng(0)
    path = folder / f"{shape.name}.onnx"
    data = folder / f"{shape.name}.data" if shape.external else None
    if data is not None and data.exists():
        data.unlink()
    nodes, initializers = [], []
    x = "x"
    for i in range(shape.layers):
        if shape.kind == "conv":
            w = rng.standard_normal((CHANNELS, CHANNELS, 3, 3), np.float32)
            w *= np.float32(np.sqrt(2.0 / (CHANNELS * 9)))
            b = (0.01 * rng.standard_normal(CHANNELS)).astype(np.float32)
            initializers += [_tensor(f"w{i}", w, data), _tensor(f"b{i}", b, None)]
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1] * 4))
        else:
            w = rng.standard_normal((shape.width, shape.width), np.float32)
            w *= np.float32(np.sqrt(2.0 / shape.width))
            initializers.append(_tensor(f"w{i}", w, data))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"c{i}"]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    dims = [1, CHANNELS, SIDE, SIDE] if shape.kind == "conv" else [ROWS, shape.width]
    graph = helper.make_graph(
        nodes,
        shape.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, dims)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    calib = folder / f"{shape.name}.calib"
    calib.mkdir(exist_ok=True)
    for s in range(SAMPLES):
        np.save(calib / f"{s:02d}.npy", rng.standard_normal(dims).astype(np.float32))
    return path


def _build_apart(shape: Shape, folder: pathlib.Path) -> pathlib.Path:
    """``build`` in a process of its own. A child's ``ru_maxrss`` counts the peak of the process
    it was forked from until it execs, so a runner that built a model of inline weights itself
    would report its own peak for every tool it runs."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as builder:
        return builder.submit(build, shape, folder).result()


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants, now (0 once gone)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = pathlib.Path(f"/proc/{current}/status").read_text()
            total += 1024 * int(status.split("VmRSS:")[1].split()[0])
            for task in pathlib.Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def measure(command: Sequence[str], cap: int, timeout: float) -> dict[str, object]:
    """Run ``command`` (niced); its wall and CPU seconds, peak RSS, exit status and last stderr
    line."""
    start = time.perf_counter()
    child = subprocess.Popen(
        ["nice", "-n", "10", *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    verdict: list[str] = []
    # Set once the child is reaped here (by wait4, for its rusage): polling the child from the
    # watcher would reap it first, and wait4 would find no child.
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(0.2):
            if _tree_rss(child.pid) > cap:
                verdict.append(f"killed above {cap / 2**30:.1f} GiB")
            elif time.perf_counter() - start > timeout:
                verdict.append(f"killed after {timeout:.0f} s")
            if verdict:
                child.kill()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    _, status, usage = os.wait4(child.pid, 0)
    finished.set()
    child.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss": usage.ru_maxrss * 1024,
        "exit": child.returncode,
        "failure": verdict[0] if verdict else (lines[-1][:200] if child.returncode else ""),
    }


_QUANTIZE_STATIC = """
import pathlib, sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
model, calib, out = sys.argv[1:4]
name = next(iter(__import__("onnx").load(model, load_external_data=False).graph.input)).name
samples = [{name: np.load(p)} for p in sorted(pathlib.Path(calib).glob("*.npy"))]
class Reader(CalibrationDataReader):
    def __init__(self): self.it = iter(samples)
    def get_next(self): return next(self.it, None)
quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                use_external_data_format=len(sys.argv) > 4)
"""


def commands(tool: str, model: pathlib.Path, out: pathlib.Path, external: bool) -> list[str]:
    calib = str(model.with_suffix(".calib"))
    mpqc = [
        str(pathlib.Path(sys.executable).parent / "mpqc"),
        str(model),
        "--hw",
        "x86_avx512_vnni",
    ]
    mpqc += ["-o", str(out), "--calib", calib, "-q"]
    if tool == "mpqc-uniform":
        return [*mpqc, "--uniform", "w8a8"]
    if tool == "mpqc-default":
        return [*mpqc, "--max-size", "0.5x"]
    script = [sys.executable, "-c", _QUANTIZE_STATIC, str(model), calib, str(out)]
    return script + ["external"] * external


TOOLS = ("mpqc-uniform", "mpqc-default", "quantize_static")


def parse_shape(text: str) -> Shape:
    """``conv1000``, ``matmul5000``, ``matmul10x4096``, ``matmul10x8192-external``."""
    external = text.endswith("-external")
    text = text.removesuffix("-external")
    kind = "conv" if text.startswith("conv") else "matmul"
    layers, _, width = text.removeprefix(kind).partition("x")
    return Shape(kind, int(layers), int(width or 64), external)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default="conv100,conv1000,conv3000,matmul1000,matmul5000,matmul10x4096,"
        "matmul10x8192-external",
        help="comma-separated shapes: convN, matmulN (64 wide), matmulNxW, ...-external",
    )
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--rss-cap", type=float, default=8.0, help="GiB; kill a run above it")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--folder", help="where models are built (default: a temporary folder)")
    args = parser.parse_args(argv)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory(prefix="mpqc-scale-", dir=args.folder) as tmp:
        folder = pathlib.Path(tmp)
        for text in args.models.split(","):
            shape = parse_shape(text)
            model = _build_apart(shape, folder)
            for tool in args.tools.split(","):
                out = folder / f"{shape.name}.{tool}.onnx"
                run = measure(
                    commands(tool, model, out, shape.external),
                    int(args.rss_cap * 2**30),
                    args.timeout,
                )
                run["weight_bytes"] = shape.weight_bytes
                run["rss_over_weights"] = round(run["peak_rss"] / shape.weight_bytes, 2)
                results.setdefault(shape.name, {})[tool] = run
                print(f"{shape.name:24} {tool:16} {json.dumps(run)}", flush=True)
                for stale in folder.glob(f"{shape.name}.{tool}*"):
                    stale.unlink()
            for stale in folder.glob(f"{shape.name}*"):
                if stale.is_file():
                    stale.unlink()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(table(results))


def table(results: dict[str, dict[str, dict[str, object]]]) -> str:
    """The markdown table of RESULTS.md: per model, per tool, seconds and peak RSS."""
    head = "| model | weights | " + " | ".join(TOOLS) + " |"
    rows = [head, "|" + "---|" * (len(TOOLS) + 2)]
    for name, runs in results.items():
        weights = next(iter(runs.values()))["weight_bytes"]
        cells = []
        for tool in TOOLS:
            run = runs.get(tool)
            if run is None:
                cells.append("")
            elif run["exit"] != 0:
                cells.append(f"fails ({run['failure'][:60]}) {run['seconds']} s")
            else:
                gb = run["peak_rss"] / 2**30
                cells.append(
                    f"{run.get('cpu_seconds', '?')} s CPU ({run['seconds']} s), {gb:.2f} GiB "
                    f"({run['rss_over_weights']}x)"
                )
        rows.append(f"| {name} | {weights / 2**20:.0f} MiB | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
