"""``python -m bench.compile_time``: mpqc's compile time against onnxruntime's quantizer.

Issue 15, item 5: the default pipeline's wall time against ``quantize_static``'s on the benchmark
models, and against ``--uniform w8a8``'s on deep chains of convolutions.

- **Models** (``--models``): per model, in one run and alternating (onnxruntime, then mpqc, per
  round), the wall time of two commands a user would type, each a fresh process (imports
  included): onnxruntime's careful recipe (``quant_pre_process`` then ``quantize_static`` QDQ
  u8s8 per channel, MinMax, ``op_types_to_quantize=[Conv, ConvTranspose, Gemm, MatMul]``) and
  ``mpqc FLOAT --hw HW -o OUT --calib DIR`` (the default pipeline), plus, with ``--budget``,
  ``mpqc ... --max-size`` at that recipe's file size. Same calibration samples for both.
- **Chains** (``--chains 100,400,1000``): ``depth`` × (3×3 Conv, 32 channels, 16×16, Relu) with
  seeded He-scaled weights and 10 seeded Gaussian calibration samples; the default pipeline against
  ``--uniform w8a8``, alternating.

The machine is shared: only ratios within one run mean anything; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CAREFUL_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: The onnxruntime command: quant_pre_process + quantize_static, as bench.baselines runs it.
_ORT = """
import sys, numpy as np, pathlib
from bench.baselines import QuantizeRequest, ort_static
folder = pathlib.Path(sys.argv[2])
samples = [dict(np.load(p)) for p in sorted(folder.glob("*.npz"))]
ort_static("u8", {ops!r})(QuantizeRequest(pathlib.Path(sys.argv[1]), samples, folder,
                                            pathlib.Path(sys.argv[3])))
"""


def chain(depth: int, channels: int = 32, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    """``depth`` × (Conv 3×3 pad 1, Relu) on ``[N, channels, size, size]``."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    x = "x"
    for i in range(depth):
        w = rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2.0 / (9 * channels))
        b = rng.standard_normal(channels) * 0.01
        weights += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node(
                "Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1] * 4, name=f"conv{i}"
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        x = f"r{i}"
    shape = ["N", channels, size, size]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def timed(command: list[str]) -> float:
    """Wall seconds of ``command``; its last error line if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {last[0]}")
    return seconds


def _mpqc(model: pathlib.Path, out: pathlib.Path, calib: pathlib.Path, hw: str, *extra: str):
    return ["mpqc", str(model), "--hw", hw, "-o", str(out), "--calib", str(calib), "-q", *extra]


def model_rows(names: list[str], hw: str, rounds: int, budget: bool) -> list[str]:
    from bench.cache import cache_dir
    from bench.models import get
    from bench.tasks.base import write_calib_dir

    rows = [
        "| model | samples | quantize_static s | mpqc default s (ratio)"
        + (" | mpqc --max-size ORT's bytes s (ratio)" if budget else "")
        + " | load |",
        "|---|---|---|---|" + ("---|" if budget else "") + "---|",
    ]
    for name in names:
        model = get(name)
        task = model.task()
        calib = write_calib_dir(
            task, cache_dir() / "calib" / f"{model.name}-n{model.sizes.n_calib}-s{model.sizes.seed}"
        )
        samples = len(list(calib.glob("*.npz")))
        ort_script = _ORT.format(ops=CAREFUL_OPS)
        with tempfile.TemporaryDirectory() as scratch:
            folder = pathlib.Path(scratch)
            for index in range(rounds):
                ort_out = folder / "ort.onnx"
                ort = timed(
                    [
                        sys.executable,
                        "-c",
                        ort_script,
                        str(model.float_path()),
                        str(calib),
                        str(ort_out),
                    ]
                )
                ours = timed(_mpqc(model.float_path(), folder / "q.onnx", calib, hw))
                cells = [f"{ort:.1f}", f"{ours:.1f} ({ours / ort:.1f}×)"]
                if budget:
                    size = ort_out.stat().st_size
                    sized = timed(
                        _mpqc(
                            model.float_path(),
                            folder / "b.onnx",
                            calib,
                            hw,
                            "--max-size",
                            f"{size / 1e6:.3f}MB",
                        )
                    )
                    cells.append(f"{sized:.1f} ({sized / ort:.1f}×)")
                rows.append(
                    f"| {name}{f' #{index + 1}' if rounds > 1 else ''} | {samples} | "
                    + " | ".join(cells)
                    + f" | {os.getloadavg()[0]:.1f} |"
                )
                print(rows[-1], flush=True)
    return rows


def chain_rows(depths: list[int], hw: str) -> list[str]:
    rows = [
        "| depth | --uniform w8a8 s | default s | ratio | load |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        folder = pathlib.Path(scratch)
        calib = folder / "calib"
        calib.mkdir()
        rng = np.random.default_rng(1)
        for i in range(10):
            np.save(
                calib / f"s{i:02d}.npy", rng.standard_normal((1, 32, 16, 16)).astype(np.float32)
            )
        for depth in depths:
            path = folder / f"chain{depth}.onnx"
            onnx.save(chain(depth), str(path))
            uniform = timed(_mpqc(path, folder / "u.onnx", calib, hw, "--uniform", "w8a8"))
            default = timed(_mpqc(path, folder / "d.onnx", calib, hw))
            rows.append(
                f"| {depth} | {uniform:.1f} | {default:.1f} | {default / uniform:.1f}× "
                f"| {os.getloadavg()[0]:.1f} |"
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated bench models")
    parser.add_argument("--chains", default="", help="comma-separated chain depths")
    parser.add_argument("--hw", default="x86_avx512_vnni", help="mpqc's --hw")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per model")
    parser.add_argument(
        "--budget", action="store_true", help="also mpqc --max-size at the recipe's file size"
    )
    args = parser.parse_args(argv)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        "?",
    )
    vnni = "avx512_vnni" in open("/proc/cpuinfo").read()
    print(f"CPU: {cpu}, {'AVX-512 VNNI' if vnni else 'no VNNI'}, {os.cpu_count()} cores\n")
    if args.models:
        print("\n".join(model_rows(args.models.split(","), args.hw, args.rounds, args.budget)))
    if args.chains:
        print("\n".join(chain_rows([int(d) for d in args.chains.split(",")], args.hw)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
