"""A model past protobuf's 2 GB limit (its weights in an external data file) compiles with
``--uniform w8a8``, and what mpqc writes loads and runs in onnxruntime, close to float.

Three 14000-wide MatMuls (2.3 GB of float weights) on a 4-row input: few layers, so the run is
bounded by reading and quantizing the weights once, not by the graph. The command runs in its own
process, so the weights it held are gone before onnxruntime runs the result here.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from models import run_ort
from onnx import TensorProto, helper

#: Layers and their width: 3 x 14000^2 float32 = 2.35 GB, past protobuf's 2 GiB.
LAYERS, WIDTH, ROWS = 3, 14000, 4
WEIGHT_BYTES = 4 * LAYERS * WIDTH**2
#: Free disk the test needs: the model, its quantized copy (a quarter) and the run's scratch.
DISK_NEEDED = 2 * WEIGHT_BYTES


def _build(folder: pathlib.Path) -> pathlib.Path:
    """The model and its data file, written one layer at a time (never all weights in memory)."""
    rng = np.random.default_rng(0)
    data = folder / "wide.onnx.data"
    nodes, initializers, x = [], [], "x"
    with data.open("wb") as sink:
        for i in range(LAYERS):
            weight = rng.standard_normal((WIDTH, WIDTH), np.float32)
            weight *= np.float32(np.sqrt(2.0 / WIDTH))
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=weight.shape)
            tensor.data_location = TensorProto.EXTERNAL
            where = {"location": data.name, "offset": sink.tell(), "length": weight.nbytes}
            for key, value in where.items():
                tensor.external_data.add(key=key, value=str(value))
            sink.write(weight.tobytes())
            del weight
            initializers.append(tensor)
            nodes += [
                helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                helper.make_node("Relu", [f"m{i}"], [f"r{i}"]),
            ]
            x = f"r{i}"
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "wide",
        [value("x", TensorProto.FLOAT, [ROWS, WIDTH])],
        [value(x, TensorProto.FLOAT, [ROWS, WIDTH])],
        initializers,
    )
    path = folder / "wide.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.slow
def test_a_model_past_2gb_compiles_and_its_output_runs(tmp_path: pathlib.Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < DISK_NEEDED:
        pytest.skip(
            f"needs {DISK_NEEDED / 1e9:.1f} GB of free disk in {tmp_path}, has {free / 1e9:.1f}"
        )
    model = _build(tmp_path)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    samples = [rng.standard_normal((ROWS, WIDTH)).astype(np.float32) for _ in range(3)]
    for i, sample in enumerate(samples):
        np.save(calib / f"{i}.npy", sample)
    out = tmp_path / "wide.w8a8.onnx"
    command = [sys.executable, "-m", "mpqc.cli", str(model), "--hw", "x86_avx512_vnni"]
    command += ["--uniform", "w8a8", "--calib", str(calib), "-o", str(out), "-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    quantized = onnx.load(str(out), load_external_data=False)
    assert "DequantizeLinear" in {node.op_type for node in quantized.graph.node}
    written = out.stat().st_size + sum(f.stat().st_size for f in tmp_path.glob("wide.w8a8*.data"))
    assert written < WEIGHT_BYTES / 3
    (got,) = run_ort(str(out), {"x": samples[0]})
    reference = _float_output(tmp_path / "wide.onnx.data", samples[0])
    sqnr = 10 * np.log10(np.sum(reference**2) / np.sum((reference - got) ** 2))
    assert sqnr > 20, sqnr


def _float_output(data: pathlib.Path, x: np.ndarray) -> np.ndarray:
    """The float model's output, in numpy over the mapped data file (onnxruntime would pack a
    copy of every weight)."""
    weights = np.memmap(data, np.float32, "r", shape=(LAYERS, WIDTH, WIDTH))
    for weight in weights:
        x = np.maximum(x @ weight, 0)
    return x
