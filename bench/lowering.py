"""``python -m bench.lowering``: does the lowered model deliver what the search priced?
(RESULTS.md §7)

(a) Size. For uniform w8a8, w4a8, w2a8, a seeded per-layer mix of the three, weight-only 4-bit
(MatMulNBits and GatherBlockQuantized, block 32) and w4a8 with MatMul/Gemm weights per block of 32
along K, the size the search optimizes — the cost pass's per-layer ``size`` entries
(``passes/lib/plan``: ``stored_bytes``) plus the bytes of every other constant — against the
tensor bytes ``lower-qdq`` writes and the file on disk (tensors plus the graph's protobuf).

(b) Speed, timed in alternation with ``bench.measure.paired_latency`` (ratios survive a machine
shared with other jobs; absolute milliseconds do not): mpqc w8a8 against onnxruntime's
``quantize_static`` (QDQ, per-channel, u8s8, MinMax, after ``quant_pre_process``) on the same
calibration samples, and on MiniLM mpqc's weight-only MatMulNBits (accuracy level 1, exact; and
level 4, int8 activations inside the kernel) against float and against onnxruntime's own
``MatMulNBitsQuantizer`` (4-bit, block 32, symmetric), with the task metric of each.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bench.baselines import QuantizeRequest, ort_matmul_nbits, ort_static
from bench.measure import file_size_mb, paired_latency, runner, session
from mpqc import examples, hwspecs
from mpqc import ir as mir
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.lib.plan import layer_plan, stored_bytes
from mpqc.pipeline import Pipeline

Inputs = dict[str, np.ndarray]
MODELS = ("digits", "minilm", "orientation", "ppocr-rec", "ddddocr")
CONFIGS = ("w8a8", "w4a8", "w2a8", "mixed", "weight-only", "w4a8-block32")
_MIX = ((8, 8), (4, 8), (2, 8))


@dataclass(frozen=True)
class Case:
    name: str
    float_path: pathlib.Path
    calibration: list[Inputs]
    latency_inputs: list[Inputs]


def load_case(name: str, n_calib: int) -> Case:
    if name == "digits":
        images, _ = examples.digits_data("eval")
        latency = [{"image": images[i : i + 1]} for i in range(8)]
        return Case(
            name, examples.digits_model_path(), examples.digits_calibration()[:n_calib], latency
        )
    from bench.models import get

    model = get(name)
    task = model.task(model.sizes.quick())
    return Case(name, model.float_path(), task.calibration_inputs[:n_calib], task.latency_inputs(4))


def analysed(case: Case, spec: hwspecs.HardwareSpec) -> tuple[ir.Model, CompileContext]:
    """The model as lower-qdq receives it: canonicalized and calibrated."""
    context = CompileContext(hw=spec, calibration=CalibrationData(tuple(case.calibration)))
    model = Pipeline("canonicalize,calibrate", context).run_ir(mir.load(str(case.float_path)))
    return model, context


def config_bits(config: str, layers: Sequence[str], seed: int = 0) -> dict[str, tuple[int, int]]:
    if config == "mixed":
        rng = np.random.default_rng(seed)
        return {name: _MIX[int(rng.integers(len(_MIX)))] for name in layers}
    if config == "weight-only":
        return {name: (4, 32) for name in layers}
    w, a = (int(x) for x in config[1:].split("-")[0].split("a"))
    return {name: (w, a) for name in layers}


def predicted_bytes(
    model: ir.Model,
    bits: dict[str, tuple[int, int]],
    spec: hwspecs.HardwareSpec,
    layout: WeightLayout,
) -> int:
    """What the search prices: every layer's footprint plus the bytes of every other constant."""
    layers = quantizable_layers(model.graph)
    owned = {
        v.name
        for layer in layers
        for v in layer.node.inputs
        if v is not None and v.const_value is not None
    }
    graphs = (model.graph, *model.graph.subgraphs())
    fixed = sum(
        v.const_value.nbytes
        for g in graphs
        for name, v in g.initializers.items()
        if name not in owned and v.const_value is not None
    )
    return fixed + sum(
        stored_bytes(layer, layer_plan(layer, *bits[layer.name], spec=spec, layout=layout))
        for layer in layers
    )


def lower(
    model: ir.Model,
    context: CompileContext,
    bits: dict[str, tuple[int, int]],
    options: str,
    path: pathlib.Path,
) -> pathlib.Path:
    copy = model.clone()
    for layer in quantizable_layers(copy.graph):
        w, a = bits[layer.name]
        annotations.BITS.set(layer.node, {"w": w, "a": a})
    Pipeline(f"lower-qdq{{{options}}}" if options else "lower-qdq", context).run_ir(copy)
    return mir.save(copy, path)


def size_rows(
    case: Case, spec: hwspecs.HardwareSpec, folder: pathlib.Path
) -> list[dict[str, object]]:
    model, context = analysed(case, spec)
    names = [layer.name for layer in quantizable_layers(model.graph)]
    rows = []
    for config in CONFIGS:
        layout = WeightLayout(
            weight_only=config == "weight-only", block_size=32 if config.endswith("block32") else 0
        )
        options = ",".join(
            [
                *(["weight_only=true"] if layout.weight_only else []),
                *([f"block_size={layout.block_size}"] if layout.block_size else []),
            ]
        )
        bits = config_bits(config, names)
        predicted = predicted_bytes(model, bits, spec, layout)
        path = lower(model, context, bits, options, folder / f"{case.name}.{config}.onnx")
        written = mir.tensor_bytes(mir.load(str(path)))
        file_bytes = int(file_size_mb(path) * 1e6)
        rows.append(
            {
                "model": case.name,
                "config": config,
                "predicted": predicted,
                "tensors": written,
                "file": file_bytes,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def speed_rows(
    case: Case, spec: hwspecs.HardwareSpec, folder: pathlib.Path, repeats: int
) -> dict[str, object]:
    """mpqc w8a8 against onnxruntime quantize_static u8s8 (the file from ``size_rows``).

    onnxruntime leaves LSTM/GRU float; mpqc stores their W and R in int8 behind a DequantizeLinear
    that runs every inference. Where a model has them, mpqc w8a8 with them float (the layer set
    onnxruntime quantizes) is timed too.
    """
    mpqc_path = folder / f"{case.name}.w8a8.onnx"
    ort_path = folder / f"{case.name}.ort-u8s8.onnx"
    ort_static("u8")(QuantizeRequest(case.float_path, case.calibration, folder, ort_path))
    row: dict[str, object] = {"model": case.name}
    for threads in (1, 2):
        row[f"mpqc_vs_ort_{threads}t"] = paired_latency(
            mpqc_path, ort_path, case.latency_inputs, threads, repeats
        ).vs_reference
    model, context = analysed(case, spec)
    layers = quantizable_layers(model.graph)
    if any(layer.node.op_type in ("LSTM", "GRU") for layer in layers):
        bits = {
            layer.name: (32, 32) if layer.node.op_type in ("LSTM", "GRU") else (8, 8)
            for layer in layers
        }
        rnn_float = lower(model, context, bits, "", folder / f"{case.name}.w8a8-rnn-float.onnx")
        row["mpqc_rnn_float_vs_ort_1t"] = paired_latency(
            rnn_float, ort_path, case.latency_inputs, 1, repeats
        ).vs_reference
        row["mpqc_rnn_float_mb"] = file_size_mb(rnn_float)
    row["mpqc_vs_float_1t"] = paired_latency(
        mpqc_path, case.float_path, case.latency_inputs, 1, repeats
    ).vs_reference
    row["ort_vs_float_1t"] = paired_latency(
        ort_path, case.float_path, case.latency_inputs, 1, repeats
    ).vs_reference
    row["mb"] = {
        "mpqc": file_size_mb(mpqc_path),
        "ort": file_size_mb(ort_path),
        "float": file_size_mb(case.float_path),
    }
    print(json.dumps(row), flush=True)
    return row


def weight_only_rows(
    spec: hwspecs.HardwareSpec, folder: pathlib.Path, repeats: int
) -> list[dict[str, object]]:
    """MiniLM: mpqc MatMulNBits (levels 1 and 4) and onnxruntime's quantizer, against float."""
    from bench.models import get

    bench_model = get("minilm")
    task = bench_model.task(bench_model.sizes.quick())
    case = Case(
        "minilm", bench_model.float_path(), task.calibration_inputs[:4], task.latency_inputs(4)
    )
    model, context = analysed(case, spec)
    names = [layer.name for layer in quantizable_layers(model.graph)]
    # MatMuls only, as onnxruntime's quantizer does (the Gather table stays float in both).
    bits = {
        layer.name: ((4, 32) if layer.node.op_type == "MatMul" else (32, 32))
        for layer in quantizable_layers(model.graph)
    }
    assert set(bits) == set(names)
    paths = {
        "mpqc-nbits4-acc1": lower(
            model,
            context,
            bits,
            "weight_only=true,accuracy_level=1",
            folder / "minilm.nbits.acc1.onnx",
        ),
        "mpqc-nbits4-acc4": lower(
            model,
            context,
            bits,
            "weight_only=true,accuracy_level=4",
            folder / "minilm.nbits.acc4.onnx",
        ),
        # What ``mpqc --weight-only`` emits: the word table too, as GatherBlockQuantized.
        "mpqc-weight-only": lower(
            model,
            context,
            {name: (4, 32) for name in names},
            "weight_only=true",
            folder / "minilm.weight-only.onnx",
        ),
        "ort-nbits4": folder / "minilm.ort-nbits.onnx",
    }
    ort_matmul_nbits(
        QuantizeRequest(case.float_path, case.calibration, folder, paths["ort-nbits4"])
    )
    float_metrics = task.evaluate(runner(session(case.float_path, 1), task.output_names)).metrics
    rows = []
    for name, path in paths.items():
        metrics = task.evaluate(runner(session(path, 1), task.output_names)).metrics
        row = {
            "recipe": name,
            "mb": file_size_mb(path),
            "vs_float_1t": paired_latency(
                path, case.float_path, case.latency_inputs, 1, repeats
            ).vs_reference,
            "vs_ort_nbits_1t": paired_latency(
                path, paths["ort-nbits4"], case.latency_inputs, 1, repeats
            ).vs_reference,
            "metrics": metrics,
            "float_metrics": float_metrics,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lowering", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--parts", default="size,speed,weight-only", help="any of size, speed, weight-only"
    )
    parser.add_argument("--hw", default="x86_avx2")
    parser.add_argument("--calib", type=int, default=8, help="calibration samples per model")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=pathlib.Path, help="write every row as JSON here")
    args = parser.parse_args(argv)
    spec = hwspecs.load(args.hw)
    parts = set(args.parts.split(","))
    results: dict[str, list] = {"size": [], "speed": [], "weight-only": []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = pathlib.Path(scratch)
        for name in args.models.split(","):
            case = load_case(name, args.calib)
            if parts & {"size", "speed"}:
                results["size"] += size_rows(case, spec, folder)
            if "speed" in parts:
                results["speed"].append(speed_rows(case, spec, folder, args.repeats))
        if "weight-only" in parts:
            results["weight-only"] = weight_only_rows(spec, folder, args.repeats)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
