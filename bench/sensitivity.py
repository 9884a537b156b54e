"""Do the sensitivity scores predict real damage, and what do they cost? Spearman's rho, wall time.

For each model, the *true damage* of lowering one layer alone to b bits (weights; b = 2, 3, 4, 8) is
measured on held-out data through the configurable evaluator — the numbers lower-qdq ships:

- digits (the embedded CNN): the drop in top-1 accuracy on the 300-image evaluation split, and the
  output KL divergence from float;
- orientation (PP-LCNet): the output KL divergence on held-out pages (accuracy saturates on clean
  pages);
- minilm (paraphrase-MiniLM-L3-v2): the drop in paraphrase-retrieval MRR, and 1 - the mean cosine of
  the sentence embeddings to float's, on held-out sentences;
- ppocr (PP-OCRv4 recognizer): the drop in character accuracy on held-out rendered lines.

Every ``sensitivity-*`` pass then scores the same (layer, b) pairs from calibration data only, and
the table gives, per metric, Spearman's rho against the truth across layers for each b (does it
order the layers right?), pooled over all (layer, b) pairs, and the pass's wall time relative to one
float pass over the calibration set. ``task`` uses the user-metric path (lowered models) with
accuracy on the *calibration* split, so it is not scored on the data that defines the truth (digits
only). ``--sweep`` adds sensitivity-output's rho and time at 4, 8, 16 and 32 calibration samples.

``--speed MODEL`` and ``--data-free`` time the passes themselves (``bench.sensitivity_cost``).

onnx's ``light_*`` backend-test models are checked too, and skipped when (as in onnx 1.23) their
weights are ConstantOfShape fills: one value per output channel (after BatchNorm folding) is stored
exactly by any per-channel grid, so every weight damage and score is zero and there is nothing to
rank.

Run: ``python -m bench.sensitivity [--models digits,orientation,minilm,ppocr,light]
[--samples 32] [--sweep]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from scipy.stats import spearmanr

import mpqc.ir as mir
from bench.sensitivity_cost import data_free_seconds, speed, timed_pass
from mpqc.core.bits import FLOAT_BITS
from mpqc.ir.annotations import sensitivity_key
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, build_pipeline
from mpqc.passes.lib.evaluator import Evaluator, Measure, Outputs
from mpqc.passes.lib.runtime import session

WBITS = (2, 3, 4, 8)
SWEEP = (4, 8, 16, 32)
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
    #: Held-out samples the truths are measured on.
    truth_samples: list[dict[str, np.ndarray]]
    #: (label, measure of the damage of per-sample outputs against float's), in table order.
    truths: list[tuple[str, Measure]]
    eval_fn: Callable[[onnx.ModelProto], float] | None = None
    #: sensitivity-output's measures that apply (KL needs a fixed class axis).
    measures: tuple[str, ...] = ("kl", "mse")


# --- Truths: picklable, so that the evaluator's worker processes can compute them -----------------


@dataclasses.dataclass(frozen=True)
class ScoreDrop:
    """Damage as the drop of a task score (higher is better) computed from per-sample outputs."""

    score: Callable[[list[Outputs]], float]

    def __call__(self, reference: list[Outputs], outputs: list[Outputs]) -> float:
        return self.score(reference) - self.score(outputs)


def top1_accuracy(labels: np.ndarray, outputs: list[Outputs]) -> float:
    return float((np.concatenate([o[0] for o in outputs]).argmax(axis=1) == labels).mean())


def retrieval_mrr(output: int, outputs: list[Outputs]) -> float:
    """MRR of each query's paraphrase among paraphrases and hard negatives (ParaphraseTask's
    layout)."""
    from bench.tasks.metrics import mean_reciprocal_rank

    embeddings = np.stack([np.asarray(o[output], np.float64).reshape(-1) for o in outputs])
    n = len(embeddings) // 3
    return mean_reciprocal_rank(embeddings[:n], embeddings[n:], list(range(n)))


@dataclasses.dataclass(frozen=True)
class CosineDamage:
    """1 - mean cosine between the float and the quantized embeddings (output ``output``)."""

    output: int

    def __call__(self, reference: list[Outputs], outputs: list[Outputs]) -> float:
        from bench.tasks.metrics import mean_cosine

        ref = np.stack([np.asarray(o[self.output], np.float64).reshape(-1) for o in reference])
        out = np.stack([np.asarray(o[self.output], np.float64).reshape(-1) for o in outputs])
        return 1.0 - mean_cosine(out, ref)


def character_accuracy(
    charset: tuple[str, ...], labels: tuple[str, ...], outputs: list[Outputs]
) -> float:
    """PP-OCR's mean character accuracy of greedy CTC decodings against ``labels``."""
    from bench.tasks.metrics import ctc_greedy_decode, text_scores

    texts = [
        " ".join(
            "".join(charset[i] for i in ctc_greedy_decode(np.asarray(o[0])[0].argmax(-1))).split()
        )
        for o in outputs
    ]
    return text_scores(texts, [" ".join(label.split()) for label in labels])["char_acc"]


# --- Cases ----------------------------------------------------------------------------------------


def digits_case(samples: int) -> Case:
    from mpqc.examples import digits_accuracy, digits_calibration, digits_data, digits_model_path

    images, labels = digits_data("eval")
    return Case(
        "digits",
        mir.load(digits_model_path()),
        digits_calibration(),
        [{"image": images}],
        [
            (
                "top-1 accuracy drop on the 300 eval images",
                ScoreDrop(functools.partial(top1_accuracy, labels)),
            ),
            ("output KL on the held-out data", "kl"),
        ],
        lambda proto: digits_accuracy(proto, split="calib"),
    )


def orientation_case(samples: int) -> Case:
    from bench.models import get
    from bench.tasks.base import TaskSizes

    bench_model = get("orientation")
    task = bench_model.task(TaskSizes(n_eval=samples, n_calib=samples))
    return Case(
        "orientation",
        mir.load(bench_model.float_path()),
        [dict(x) for x in task.calibration_inputs],
        [dict(x) for x in task.evaluation_set[0]],
        [(f"output KL on {samples} held-out pages", "kl")],
    )


def minilm_case(samples: int) -> Case:
    from bench.models import get
    from bench.tasks.base import TaskSizes

    bench_model = get("minilm")
    model = mir.load(bench_model.float_path())
    task = bench_model.task(TaskSizes(n_eval=100, n_calib=max(1, samples // 2)))
    embedding = [v.name for v in model.graph.outputs].index(task.output_names[0])
    return Case(
        "minilm",
        model,
        [dict(x) for x in task.calibration_inputs],
        [dict(x) for x in task.evaluation_set[0]],
        [
            (
                "paraphrase-retrieval MRR drop, 100 held-out queries among 200 sentences",
                ScoreDrop(functools.partial(retrieval_mrr, embedding)),
            ),
            (
                "1 - cosine of the sentence embeddings to float's, 300 held-out sentences",
                CosineDamage(embedding),
            ),
        ],
        measures=("mse",),
    )


def ppocr_case(samples: int) -> Case:
    from bench.models import get
    from bench.tasks.base import TaskSizes

    bench_model = get("ppocr-rec")
    task = bench_model.task(TaskSizes(n_eval=64, n_calib=samples))
    inputs, labels = task.evaluation_set
    accuracy = functools.partial(character_accuracy, tuple(task.charset), tuple(labels))
    return Case(
        "ppocr",
        mir.load(bench_model.float_path()),
        [dict(x) for x in task.calibration_inputs],
        [dict(x) for x in inputs],
        [("character-accuracy drop on 64 held-out lines", ScoreDrop(accuracy))],
    )


CASES = {
    "digits": digits_case,
    "orientation": orientation_case,
    "minilm": minilm_case,
    "ppocr": ppocr_case,
}


def light_models_are_degenerate() -> list[str]:
    """Names of onnx's light_* models, each with why it cannot be ranked (constant weights) or
    'usable'."""
    folder = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    verdicts = []
    for path in sorted(folder.glob("light_*.onnx")):
        model = mir.load(path)
        for step in build_pipeline("canonicalize", CompileContext()):
            step(model)
        layers = quantizable_layers(model.graph)
        constant = all(
            _constant_channels(layer.weight_array(), layer.channel_axis) for layer in layers
        )
        verdicts.append(
            f"{path.stem}: {len(layers)} layers, "
            + (
                "every output channel holds one value (ConstantOfShape fills, scaled per channel "
                "by folded BatchNorm): skipped"
                if constant
                else "usable"
            )
        )
    return verdicts


def _constant_channels(weight: np.ndarray, axis: int) -> bool:
    """Whether every output channel holds a single value (which any per-channel grid stores
    exactly)."""
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    return bool(np.all(rows == rows[:, :1]))


# --- Measuring ----------------------------------------------------------------------------------


def true_damage(case: Case, layers: Sequence[str]) -> dict[str, dict[tuple[str, int], float]]:
    """Per truth, the damage of each (layer, b) alone, on the held-out samples."""
    evaluator = Evaluator(case.model, case.truth_samples, wbits=WBITS)
    keys = [(name, b) for name in layers for b in WBITS]
    configs = [{name: (b, FLOAT_BITS)} for name, b in keys]
    return {
        label: dict(zip(keys, evaluator.errors(configs, measure), strict=True))
        for label, measure in case.truths
    }


def float_pass_seconds(model: ir.Model, samples: list[dict[str, np.ndarray]]) -> float:
    """One float run over ``samples``, in a session like the analyses' (one thread)."""
    runner = session(ir.to_proto(model).SerializeToString())
    runner.run(None, samples[0])
    start = time.perf_counter()
    for sample in samples:
        runner.run(None, sample)
    return time.perf_counter() - start


def rho(x: Sequence[float], y: Sequence[float]) -> float:
    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def _scores(model: ir.Model, metric: str) -> dict[str, dict[str, float]]:
    key = sensitivity_key(metric)
    return {layer.name: key.get(layer.node) for layer in quantizable_layers(model.graph)}


def _rhos(
    truth: dict[tuple[str, int], float], scores: dict[str, dict[str, float]], layers: Sequence[str]
) -> list[float]:
    """rho per bit-width, then pooled over every (layer, b)."""
    per_bits = [
        rho([truth[(n, b)] for n in layers], [scores[n][f"w{b}"] for n in layers]) for b in WBITS
    ]
    pooled = rho(
        [truth[(n, b)] for n in layers for b in WBITS],
        [scores[n][f"w{b}"] for n in layers for b in WBITS],
    )
    return [*per_bits, pooled]


def run_case(case: Case, samples: int, sweep: bool) -> str:
    context = CompileContext(
        calibration=CalibrationData(tuple(case.calibration)), eval_fn=case.eval_fn
    )
    for step in build_pipeline("canonicalize,calibrate", context):
        step(case.model)
    layers = [layer.name for layer in quantizable_layers(case.model.graph)]
    start = time.perf_counter()
    truths = true_damage(case, layers)
    truth_seconds = time.perf_counter() - start
    float_seconds = float_pass_seconds(case.model, case.calibration)

    scored: list[tuple[str, dict[str, dict[str, float]], float]] = []
    for label, pass_name, options, metric in METRICS:
        if (metric == "task" and case.eval_fn is None) or (
            metric == "output" and options.split(",")[0].split("=")[1] not in case.measures
        ):
            continue
        seconds = timed_pass(
            case.model,
            context,
            pass_name + ("{" + options.format(n=samples) + "}" if options else ""),
        )
        scored.append((label, _scores(case.model, metric), seconds / float_seconds))
    swept: list[tuple[str, int, dict[str, dict[str, float]], float]] = []
    if sweep:
        for measure in case.measures:
            for n in (n for n in SWEEP if n <= len(case.calibration)):
                seconds = timed_pass(
                    case.model,
                    context,
                    f"sensitivity-output{{measure={measure},samples={n},abits=[8]}}",
                )
                swept.append((measure, n, _scores(case.model, "output"), seconds / float_seconds))

    out = [
        f"### {case.name}: {len(layers)} layers, {len(case.calibration)} calibration samples, "
        f"float pass over them {float_seconds * 1e3:.0f} ms; "
        f"truths measured in {truth_seconds:.0f} s (load {os.getloadavg()[0]:.1f})",
        "",
    ]
    for truth_label, truth in truths.items():
        out += [
            f"Spearman's rho against the truth = {truth_label} "
            "(per bit-width across layers; pooled over all pairs):",
            "",
        ]
        out.append(
            "| metric | "
            + " | ".join(f"ρ w{b}" for b in WBITS)
            + " | ρ pooled | time / float pass |"
        )
        out.append("|---|" + "---|" * (len(WBITS) + 2))
        for label, scores, ratio in scored:
            out.append(
                f"| {label} | "
                + " | ".join(_fmt(r) for r in _rhos(truth, scores, layers))
                + f" | {ratio:.1f}× |"
            )
        for measure, n, scores, ratio in swept:
            out.append(
                f"| output ({measure}), {n} samples | "
                + " | ".join(_fmt(r) for r in _rhos(truth, scores, layers))
                + f" | {ratio:.1f}× |"
            )
        out += [
            "",
            f"True damage ({truth_label}):",
            "",
            "| layer | " + " | ".join(f"w{b}" for b in WBITS) + " |",
            "|---|" + "---|" * len(WBITS),
        ]
        out += [
            f"| {name} | " + " | ".join(f"{truth[(name, b)]:.3g}" for b in WBITS) + " |"
            for name in layers
        ]
        out.append("")
    return "\n".join(out)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="digits,light", help="comma-separated: " + ", ".join([*CASES, "light"])
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=32,
        help=(
            "calibration samples for output and orthogonality (and held-out pages for orientation)"
        ),
    )
    parser.add_argument(
        "--sweep", action="store_true", help="also sensitivity-output at 4, 8, 16, 32 samples"
    )
    parser.add_argument(
        "--speed",
        metavar="MODEL",
        help="time sensitivity-output against quantize_static on a benchmark model",
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds for --speed")
    parser.add_argument(
        "--data-free",
        action="store_true",
        help="time the data-free passes on a 25M-parameter model",
    )
    args = parser.parse_args(argv)
    if args.speed:
        print(speed(args.speed, args.rounds, WBITS))
        return 0
    if args.data_free:
        print(data_free_seconds())
        return 0
    for name in args.models.split(","):
        if name == "light":
            print("### onnx light_* models\n")
            print("\n".join(f"- {v}" for v in light_models_are_degenerate()))
        elif name in CASES:
            print(run_case(CASES[name](args.samples), args.samples, args.sweep), flush=True)
        else:
            parser.error(f"unknown model {name!r}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
