"""``python -m bench.uniform``: mpqc ``--uniform w8a8`` against onnxruntime's ``quantize_static``.

The compiler's baseline promise (issue "The compiler end to end"): on the same model and the same
calibration data, uniform 8-bit mpqc is as accurate as onnxruntime's own quantizer (QDQ, per-channel
int8 weights, unsigned 8-bit activations, MinMax, after ``quant_pre_process``), runs as fast, and
compiles in comparable time. Models: the embedded digits CNN (task metric: accuracy on its
evaluation split) and onnx's ``light_*`` architectures with seeded weights (fidelity to float on
held-out random inputs: output SQNR and top-1 agreement). Both tools run in this process, one after
the other, and latency is timed in alternation (``bench.measure.paired_latency``), so every number
is a ratio from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

import mpqc
from bench.baselines import QuantizeRequest, ort_static
from bench.light import LIGHT_MODELS, data_input, light_model
from bench.measure import file_size_mb, paired_latency
from bench.models import prepare
from mpqc import examples

Inputs = dict[str, np.ndarray]

#: The default selection: every light architecture that quantizes in under a minute here.
DEFAULT_MODELS = ("digits", "squeezenet", "shufflenet", "inception_v1", "resnet50", "densenet121")


@dataclass(frozen=True)
class Case:
    """A float model, its calibration and evaluation inputs, and how a model is scored."""

    name: str
    model: onnx.ModelProto
    calibration: list[Inputs]
    evaluation: list[Inputs]
    score: Callable[
        [str, str, list[Inputs]], dict[str, float]
    ]  # (candidate, float) paths -> metrics


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def fidelity(candidate: str, reference: str, inputs: list[Inputs]) -> dict[str, float]:
    """Output SQNR (dB) and top-1 agreement of ``candidate`` against ``reference``."""
    cand, ref = _session(candidate), _session(reference)
    signal = noise = 0.0
    agree = 0
    for sample in inputs:
        want = (
            ref.run(None, sample)[0]
            .astype(np.float64)
            .reshape(len(next(iter(sample.values()))), -1)
        )
        got = cand.run(None, sample)[0].astype(np.float64).reshape(want.shape)
        signal += float((want**2).sum())
        noise += float(((want - got) ** 2).sum())
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
    total = sum(len(next(iter(s.values()))) for s in inputs)
    return {
        "sqnr_db": 10 * np.log10(signal / noise) if noise else float("inf"),
        "top1_agreement": agree / total,
    }


def digits_case() -> Case:
    model = onnx.load(str(examples.digits_model_path()))
    images, _ = examples.digits_data("eval")

    def score(candidate: str, reference: str, inputs: list[Inputs]) -> dict[str, float]:
        return {
            "accuracy": examples.digits_accuracy(candidate),
            **fidelity(candidate, reference, inputs),
        }

    evaluation = [{"image": images[i : i + 50]} for i in range(0, len(images), 50)]
    return Case("digits", model, examples.digits_calibration(), evaluation, score)


def light_case(name: str, n_calib: int = 16, n_eval: int = 16, seed: int = 0) -> Case:
    model = prepare(light_model(name, seed))
    image = data_input(model)
    shape = [d.dim_value or 1 for d in image.type.tensor_type.shape.dim]
    rng = np.random.default_rng([seed, 7])
    draw = lambda: {image.name: rng.standard_normal(shape).astype(np.float32)}  # noqa: E731
    calibration = [draw() for _ in range(n_calib)]
    evaluation = [draw() for _ in range(n_eval)]
    return Case(name, model, calibration, evaluation, fidelity)


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_case(case: Case, hw: str, folder: pathlib.Path, repeats: int) -> dict[str, object]:
    float_path = folder / f"{case.name}.float.onnx"
    onnx.save(case.model, str(float_path))
    ort_path, mpqc_path = folder / f"{case.name}.ort.onnx", folder / f"{case.name}.mpqc.onnx"
    request = QuantizeRequest(float_path, case.calibration, folder, ort_path)
    ort_seconds = _timed(lambda: ort_static("u8")(request))

    def compile_mpqc() -> None:
        result = mpqc.compile(
            str(float_path),
            mpqc.CompileOptions(hw=hw, calibration=case.calibration, uniform="w8a8"),
        )
        mpqc.save(result.ir_model, mpqc_path)

    mpqc_seconds = _timed(compile_mpqc)
    row: dict[str, object] = {"model": case.name}
    for tool, path, seconds in (("ort", ort_path, ort_seconds), ("mpqc", mpqc_path, mpqc_seconds)):
        row[tool] = {
            **case.score(str(path), str(float_path), case.evaluation),
            "mb": file_size_mb(path),
            "compile_s": seconds,
        }
    latency = paired_latency(mpqc_path, ort_path, case.evaluation[:4], threads=1, repeats=repeats)
    row["mpqc_vs_ort_latency"] = latency.vs_reference
    row["ort_vs_float_latency"] = paired_latency(
        ort_path, float_path, case.evaluation[:4], 1, repeats
    ).vs_reference
    return row


def markdown(rows: Sequence[dict], hw: str) -> str:
    lines = [
        f"mpqc `--uniform w8a8 --hw {hw}` against onnxruntime `quantize_static` (QDQ, "
        "per-channel, u8s8, MinMax, after `quant_pre_process`), same calibration data, one run. "
        "Speed = onnxruntime latency / mpqc latency (≥ 1 means mpqc is faster), timed in "
        "alternation, 1 thread.",
        "",
        "| model | metric | onnxruntime | mpqc | MB ort / mpqc | speed mpqc vs ort "
        "| compile s ort / mpqc (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ort_row, mpqc_row = row["ort"], row["mpqc"]
        metric = "accuracy" if "accuracy" in ort_row else "sqnr_db"
        extra = (
            ""
            if metric == "sqnr_db"
            else f" (SQNR {ort_row['sqnr_db']:.1f} / {mpqc_row['sqnr_db']:.1f} dB)"
        )
        lines.append(
            f"| {row['model']} | {metric}{extra} "
            f"| {ort_row[metric]:.4g} (top-1 agr. {ort_row['top1_agreement']:.3f}) "
            f"| {mpqc_row[metric]:.4g} (top-1 agr. {mpqc_row['top1_agreement']:.3f}) "
            f"| {ort_row['mb']:.2f} / {mpqc_row['mb']:.2f} | {1 / row['mpqc_vs_ort_latency']:.2f} "
            f"| {ort_row['compile_s']:.1f} / {mpqc_row['compile_s']:.1f} "
            f"({mpqc_row['compile_s'] / ort_row['compile_s']:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.uniform", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"digits and any of {', '.join(LIGHT_MODELS)}",
    )
    parser.add_argument(
        "--hw", default="x86_avx2", help="mpqc's target spec (the machine this runs on)"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=pathlib.Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            case = digits_case() if name == "digits" else light_case(name)
            rows.append(run_case(case, args.hw, pathlib.Path(scratch), args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows, args.hw))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
