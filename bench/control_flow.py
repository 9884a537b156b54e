"""``python -m bench.control_flow``: layers inside If/Loop/Scan bodies, mpqc against onnxruntime's
quantizer (RESULTS.md §8b).

A synthetic model with most of its weights in bodies: a stem Conv feeding an If whose branches each
hold two Convs, a Loop (8 trips, a constant) whose body is a residual two-MatMul MLP (its state
keeps its scale from trip to trip), and a Scan over 16 steps whose body is an RNN cell (two
MatMuls); a classifier Gemm in the main graph reads all three. The model returns the logits, then
the Loop's and the Scan's final states (the table shows where damage comes from; the search scores
the logits, the first output). Calibration runs both If branches (16 samples, alternating); 16
held-out samples score each output's SQNR against float. Rows: mpqc ``--uniform w8a8``; mpqc's
default pipeline under ``--max-size 0.2x`` (latency unbounded); onnxruntime's ``quantize_static``
(QDQ, per channel, u8 activations, s8 weights). Per row: the weights stored quantized in the main
graph and in the bodies, the written bytes, the time of one inference (onnxruntime CPU, one thread,
all rows timed interleaved: median thread CPU time) and the SQNR of each output (dB).

Runs on whichever mpqc is installed, so the same script measures a checkout from before bodies
were searched.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import mpqc
from mpqc.core import MpqcError
from mpqc.hwspecs.kernels import measure_models

TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
flows (float[1,3,32,32] image, bool sharp, float[1,128] h0, float[16,1,64] seq)
    => (float[1,10] logits, float[1,128] h, float[1,128] last) {
  s0 = Conv <pads=[1,1,1,1]> (image, w_stem, b_stem)
  s = Relu(s0)
  f = If (sharp) <
    then_branch = sharp_g () => (float[1,32,16,16] t) {
      t0 = Conv <pads=[1,1,1,1], strides=[2,2]> (s, w_t1, b_t1)
      t1 = Relu(t0)
      t = Conv <pads=[1,1,1,1]> (t1, w_t2, b_t2)
    },
    else_branch = smooth_g () => (float[1,32,16,16] e) {
      e0 = Conv <pads=[2,2,2,2], strides=[2,2]> (s, w_e1, b_e1)
      e1 = Relu(e0)
      e = Conv <pads=[1,1,1,1]> (e1, w_e2, b_e2)
    }
  >
  r = Relu(f)
  p = GlobalAveragePool(r)
  q = Flatten(p)
  h = Loop (trips, go, h0) <
    body = mlp (int64 i, bool c, float[1,128] x) => (bool c2, float[1,128] y) {
      c2 = Identity(c)
      u = MatMul(x, w_up)
      v = Relu(u)
      d = MatMul(v, w_down)
      z = Add(x, d)
      y = Tanh(z)
    }
  >
  last, states = Scan (h0, seq) <
    num_scan_inputs = 1,
    body = cell (float[1,128] hs, float[1,64] xs) => (float[1,128] hn, float[1,128] out) {
      a = MatMul(xs, w_in)
      b = MatMul(hs, w_rec)
      z = Add(a, b)
      hn = Tanh(z)
      out = Identity(hn)
    }
  >
  joined = Concat <axis = 1> (q, h, last)
  logits = Gemm <transB=1> (joined, w_head, b_head)
}
"""

WEIGHTS = {
    "w_stem": (16, 3, 3, 3),
    "b_stem": (16,),
    "w_t1": (32, 16, 3, 3),
    "b_t1": (32,),
    "w_t2": (32, 32, 3, 3),
    "b_t2": (32,),
    "w_e1": (32, 16, 5, 5),
    "b_e1": (32,),
    "w_e2": (32, 32, 3, 3),
    "b_e2": (32,),
    "w_head": (10, 288),
    "b_head": (10,),
    "w_up": (128, 256),
    "w_down": (256, 128),
    "w_in": (64, 128),
    "w_rec": (128, 128),
}


def build(seed: int = 0) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(seed)
    for name, shape in WEIGHTS.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        # The recurrences contract (a gain of 1/2 on their last MatMul): a random recurrence with
        # gain above 1 is chaotic, and its float outputs would diverge from any perturbation.
        gain = 0.5 if name in ("w_down", "w_rec") else 1.0
        array = rng.normal(0.0, gain * np.sqrt(1.0 / fan_in), size=shape).astype(np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    proto.graph.initializer.append(numpy_helper.from_array(np.array(8, np.int64), "trips"))
    proto.graph.initializer.append(numpy_helper.from_array(np.array(True), "go"))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def samples(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32),
            "sharp": np.array(i % 2 == 0),
            "h0": np.tanh(rng.standard_normal((1, 128))).astype(np.float32),  # a state's scale
            "seq": rng.standard_normal((16, 1, 64)).astype(np.float32),
        }
        for i in range(count)
    ]


def quantized_weights(proto: onnx.ModelProto) -> tuple[int, int]:
    """(main graph, bodies): weights stored quantized — a DequantizeLinear of a constant matrix or
    kernel (not a bias or a scale), or a MatMulNBits."""
    matrices: set[str] = set()

    def count(graph: onnx.GraphProto) -> tuple[int, int]:
        matrices.update(t.name for t in graph.initializer if len(t.dims) >= 2)
        here = sum(
            n.op_type == "MatMulNBits"
            or (n.op_type == "DequantizeLinear" and n.input[0] in matrices)
            for n in graph.node
        )
        inner = 0
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    inner += sum(count(attribute.g))
        return here, inner

    return count(proto.graph)


def written_bytes(proto: onnx.ModelProto) -> int:
    """The model's bytes without its metadata (mpqc's report and front)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.metadata_props[:]
    return copy.ByteSize()


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def sqnr(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    ref = np.concatenate([r.ravel() for r in reference])
    out = np.concatenate([g.ravel() for g in got])
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - out) ** 2), 1e-30)))


def onnxruntime_static(proto: onnx.ModelProto, calibration: list[dict]) -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = pathlib.Path(folder, "f.onnx"), pathlib.Path(folder, "q.onnx")
        onnx.save(proto, source)
        quantize_static(
            str(source),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        )
        return onnx.load(str(target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--save", type=pathlib.Path, help="write each row's model to this folder (NN.onnx)"
    )
    args = parser.parse_args()
    proto = build(args.seed)
    calibration, held_out = samples(16, 1), samples(16, 2)
    reference = [run(proto, feeds) for feeds in held_out]
    rows: list[tuple[str, onnx.ModelProto | str]] = []
    for label, options in (
        ("mpqc --uniform w8a8", {"uniform": "w8a8"}),
        ("mpqc --max-size 0.2x", {"max_size": "0.2x", "max_latency": "10s"}),
    ):
        try:
            result = mpqc.compile(
                proto,
                mpqc.CompileOptions(
                    hw="x86_avx512_vnni", calibration=calibration, seed=args.seed, **options
                ),
            )
            rows.append((label, result.model))
        except Exception as exc:  # a refusal, or a crash of an older checkout: one line either way
            kind = "refused" if isinstance(exc, MpqcError) else type(exc).__name__
            rows.append((label, f"{kind}: {str(exc).splitlines()[0][:120]}"))
    rows.append(("onnxruntime quantize_static", onnxruntime_static(proto, calibration)))
    models = [proto] + [model for _, model in rows if not isinstance(model, str)]
    # Interleaved, one thread, median thread CPU time, on a sample that runs the then branch.
    timings = measure_models(models, threads=1, min_seconds=2.0, feeds=held_out[0])
    cpu = {id(model): timing.cpu_s for model, timing in zip(models, timings, strict=True)}
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for index, model in enumerate(models):
            onnx.save(model, args.save / f"{index:02d}.onnx")
    names = [o.name for o in proto.graph.output]
    print("| | weights quantized: main / bodies | bytes | ms | " + " | ".join(names) + " |")
    print("|---|---|---|---|" + "---|" * len(names))
    print(
        f"| float | 0 / 0 | {written_bytes(proto)} | {1e3 * cpu[id(proto)]:.3f} | "
        + " | ".join("∞" for _ in names)
        + " |"
    )
    for label, model in rows:
        if isinstance(model, str):
            print(f"| {label} | {model} |")
            continue
        main_count, body_count = quantized_weights(model)
        outputs = [run(model, feeds) for feeds in held_out]
        scores = [
            sqnr([r[i] for r in reference], [o[i] for o in outputs]) for i in range(len(names))
        ]
        print(
            f"| {label} | {main_count} / {body_count} | {written_bytes(model)} | "
            f"{1e3 * cpu[id(model)]:.3f} | " + " | ".join(f"{s:.1f}" for s in scores) + " |"
        )


if __name__ == "__main__":
    main()
