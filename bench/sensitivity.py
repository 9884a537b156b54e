"""Do the sensitivity scores predict real damage? Spearman's rho of every metric against the truth.

For each model, the *true damage* of lowering one layer alone to b bits (weights; b = 2, 3, 4, 8) is
measured on held-out data through the configurable evaluator — the same numbers lower-qdq ships:

- digits (the embedded CNN): the drop in top-1 accuracy on the 300-image evaluation split;
- orientation (PP-LCNet, from the benchmark cache; ``--models digits,orientation``): the KL divergence
  of the output distribution from float on held-out pages (accuracy saturates on clean pages).

Every ``sensitivity-*`` pass then scores the same (layer, b) pairs from calibration data only, and the
table gives, per metric, Spearman's rho against the truth across layers for each b (does it order the
layers right?), pooled over all (layer, b) pairs, and the pass's wall time relative to one float pass
over the calibration set. ``task`` uses the user-metric path (lowered models) with accuracy on the
*calibration* split, so it is not scored on the data that defines the truth.

onnx's ``light_*`` backend-test models are checked too, and skipped when (as in onnx 1.23) their
weights are ConstantOfShape fills: one value per output channel (after BatchNorm folding) is stored
exactly by any per-channel grid, so every weight damage and score is zero and there is nothing to rank.

Run: ``python -m bench.sensitivity [--models digits,orientation,light] [--samples 32]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from scipy.stats import spearmanr

import mpqc.ir as mir
from mpqc.ir.annotations import sensitivity_key
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, build_pipeline
from mpqc.passes.evaluator import FLOAT_BITS, Evaluator, output_error

WBITS = (2, 3, 4, 8)
#: (row label, pass, options with {n} = samples, annotation metric)
METRICS = (
    ("entropy (relative)", "sensitivity-entropy", "", "entropy"),
    ("entropy (params)", "sensitivity-entropy", "score=params", "entropy"),
    ("weight-error", "sensitivity-weight-error", "", "weight-error"),
    ("output (kl)", "sensitivity-output", "measure=kl,samples={n}", "output"),
    ("output (mse)", "sensitivity-output", "measure=mse,samples={n}", "output"),
    ("orthogonality", "sensitivity-orthogonality", "samples={n}", "orthogonality"),
    ("task", "sensitivity-task", "", "task"),
)


@dataclasses.dataclass
class Case:
    """One model and how its truth is measured."""

    name: str
    model: ir.Model
    calibration: list[dict[str, np.ndarray]]
    #: Held-out samples for the truth, and a task score of their outputs (higher is better) if any.
    truth_samples: list[dict[str, np.ndarray]]
    truth_score: Callable[[list[list[np.ndarray]]], float] | None
    truth_label: str
    eval_fn: Callable[[onnx.ModelProto], float] | None


def digits_case() -> Case:
    from mpqc.examples import digits_accuracy, digits_calibration, digits_data, digits_model_path

    images, labels = digits_data("eval")

    def accuracy(outputs: list[list[np.ndarray]]) -> float:
        return float((outputs[0][0].argmax(axis=1) == labels).mean())

    return Case(
        "digits",
        mir.load(digits_model_path()),
        digits_calibration(),
        [{"image": images}],
        accuracy,
        "top-1 accuracy drop on the 300 eval images",
        lambda proto: digits_accuracy(proto, split="calib"),
    )


def orientation_case(samples: int) -> Case:
    from bench.models import get
    from bench.tasks.base import TaskSizes

    bench_model = get("orientation")
    task = bench_model.task(TaskSizes(n_eval=samples, n_calib=samples))
    calibration = [dict(x) for x in task.calibration_inputs]
    held_out = [dict(x) for x in task.evaluation_set[0]]
    return Case("orientation", mir.load(bench_model.float_path()), calibration, held_out, None, "", None)


def light_models_are_degenerate() -> list[str]:
    """Names of onnx's light_* models, each with why it cannot be ranked (constant weights) or 'usable'."""
    folder = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    verdicts = []
    for path in sorted(folder.glob("light_*.onnx")):
        model = mir.load(path)
        for step in build_pipeline("canonicalize", CompileContext()):
            step(model)
        layers = quantizable_layers(model.graph)
        constant = all(_constant_channels(layer.weight_array(), layer.channel_axis) for layer in layers)
        verdicts.append(
            f"{path.stem}: {len(layers)} layers, "
            + ("every output channel holds one value (ConstantOfShape fills, scaled per channel by folded BatchNorm): skipped" if constant else "usable")
        )
    return verdicts


def _constant_channels(weight: np.ndarray, axis: int) -> bool:
    """Whether every output channel holds a single value (which any per-channel grid stores exactly)."""
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    return bool(np.all(rows == rows[:, :1]))


# --- Measuring ----------------------------------------------------------------------------------


def true_damage(case: Case, layers: Sequence[str]) -> dict[str, dict[tuple[str, int], float]]:
    """Per kind of truth (the task score's drop when there is one, output KL always), damage per (layer, b)."""
    evaluator = Evaluator(case.model, case.truth_samples, wbits=WBITS)
    keys = [(name, b) for name in layers for b in WBITS]
    outputs = {key: evaluator.run({key[0]: (key[1], FLOAT_BITS)}) for key in keys}
    truths = {}
    if case.truth_score is not None:
        reference = case.truth_score(evaluator.reference)
        truths[case.truth_label] = {key: reference - case.truth_score(out) for key, out in outputs.items()}
    truths["output KL on the held-out data"] = {key: output_error(evaluator.reference, out, "kl") for key, out in outputs.items()}
    return truths


def float_pass_seconds(model: ir.Model, samples: list[dict[str, np.ndarray]]) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, samples[0])
    start = time.perf_counter()
    for sample in samples:
        session.run(None, sample)
    return time.perf_counter() - start


def rho(x: Sequence[float], y: Sequence[float]) -> float:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def run_case(case: Case, samples: int) -> str:
    context = CompileContext(calibration=CalibrationData(tuple(case.calibration)), eval_fn=case.eval_fn)
    for step in build_pipeline("canonicalize,calibrate", context):
        step(case.model)
    layers = [layer.name for layer in quantizable_layers(case.model.graph)]
    truths = true_damage(case, layers)
    float_seconds = float_pass_seconds(case.model, case.calibration)

    scored: list[tuple[str, dict[str, dict[str, float]], float]] = []
    for label, pass_name, options, metric in METRICS:
        if metric == "task" and case.eval_fn is None:
            continue
        (step,) = build_pipeline(pass_name + ("{" + options.format(n=samples) + "}" if options else ""), context)
        start = time.perf_counter()
        step(case.model)
        seconds = time.perf_counter() - start
        key = sensitivity_key(metric)
        scored.append((label, {layer.name: key.get(layer.node) for layer in quantizable_layers(case.model.graph)}, seconds / float_seconds))

    out = [f"### {case.name}: {len(layers)} layers, {len(case.calibration)} calibration samples, float pass over them {float_seconds * 1e3:.1f} ms", ""]
    for truth_label, truth in truths.items():
        out += [f"Spearman's rho against the truth = {truth_label} (per bit-width across layers; pooled over all pairs):", ""]
        out.append("| metric | " + " | ".join(f"ρ w{b}" for b in WBITS) + " | ρ pooled | time / float pass |")
        out.append("|---|" + "---|" * (len(WBITS) + 2))
        for label, scores, ratio in scored:
            per_bits = [rho([truth[(n, b)] for n in layers], [scores[n][f"w{b}"] for n in layers]) for b in WBITS]
            pooled = rho([truth[(n, b)] for n in layers for b in WBITS], [scores[n][f"w{b}"] for n in layers for b in WBITS])
            out.append(f"| {label} | " + " | ".join(_fmt(r) for r in [*per_bits, pooled]) + f" | {ratio:.1f}× |")
        out += ["", f"True damage ({truth_label}):", "", "| layer | " + " | ".join(f"w{b}" for b in WBITS) + " |", "|---|" + "---|" * len(WBITS)]
        out += [f"| {name} | " + " | ".join(f"{truth[(name, b)]:.3g}" for b in WBITS) + " |" for name in layers]
        out.append("")
    return "\n".join(out)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,light", help="comma-separated: digits, orientation, light")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples for output and orthogonality (and held-out pages for orientation)")
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        if name == "light":
            print("### onnx light_* models\n")
            print("\n".join(f"- {v}" for v in light_models_are_degenerate()))
        elif name == "digits":
            print(run_case(digits_case(), args.samples))
        elif name == "orientation":
            print(run_case(orientation_case(args.samples), args.samples))
        else:
            parser.error(f"unknown model {name!r}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
