"""``python -m bench.strategies``: every search strategy on one model and budget, checked on file.

For each strategy it compiles the model under ``--max-size``, writes it, and checks the promise on
the written model itself: the bytes of its tensors must not exceed the budget the search resolved.
It reports the chosen point's predicted size, the written bytes, output fidelity on held-out samples
(and the task metric for the embedded digits model), how many exact evaluations the strategy spent,
and the wall time.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import onnx_ir as ir

import mpqc
from mpqc import examples

STRATEGIES = ("ilp", "greedy", "eagl", "nsga2", "mohaq", "haq", "nemo", "hago", "ompq")
#: Strategy options that keep exact-evaluation strategies to a few hundred evaluations.
LIMITS = {
    "nsga2": "generations=30",
    "mohaq": "generations=30",
    "haq": "episodes=120",
    "nemo": "max_evaluations=400",
}


#: Strategies whose method names its own damage score; the rest read output perturbation.
METRICS = {"eagl": "entropy", "ompq": "orthogonality"}


def pipeline(strategy: str, samples: int) -> str:
    metric = METRICS.get(strategy, "output")
    sensitivity = f"sensitivity-{metric}" + (
        f"{{samples={samples}}}" if metric != "entropy" else ""
    )
    options = ",".join(
        filter(
            None,
            [
                f"strategy={strategy}",
                f"metric={metric}",
                f"samples={samples}",
                LIMITS.get(strategy, ""),
            ],
        )
    )
    return f"canonicalize,calibrate,{sensitivity},cost,search{{{options}}},lower-qdq,verify"


def tensor_bytes(path: pathlib.Path) -> int:
    model = ir.load(path)
    return sum(
        v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
    )


def run(
    model: str, calibration, hw: str, budget: str, strategies: list[str], samples: int, eval_fn
) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for strategy in strategies:
            start = time.perf_counter()
            result = mpqc.compile(
                model,
                mpqc.CompileOptions(
                    hw=hw,
                    calibration=calibration,
                    max_size=budget,
                    pipeline=pipeline(strategy, samples),
                    eval_fn=eval_fn,
                ),
            )
            seconds = time.perf_counter() - start
            path = mpqc.save(result.ir_model, pathlib.Path(scratch) / f"{strategy}.onnx")
            verify = result.report["verify"]
            limit = result.pareto["constraints"]["size"]
            written = tensor_bytes(path)
            rows.append(
                {
                    "strategy": strategy,
                    "budget_bytes": limit,
                    "predicted_bytes": result.pareto["chosen_objectives"]["size"],
                    "written_bytes": written,
                    "met": written <= limit,
                    "sqnr_db": verify.get("sqnr_db"),
                    "top1_agreement": verify.get("top1_agreement"),
                    "task_metric": verify.get("task_metric"),
                    "exact_evaluations": result.pareto["evaluations"],
                    "seconds": seconds,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], title: str) -> str:
    lines = [
        title,
        "",
        "| strategy | budget B | predicted B | written B | met | SQNR dB | top-1 agr. | task "
        "| exact evals | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        task = "" if r["task_metric"] is None else f"{r['task_metric']:.4f}"
        lines.append(
            f"| {r['strategy']} | {r['budget_bytes']:.0f} | {r['predicted_bytes']:.0f} "
            f"| {r['written_bytes']} | {'yes' if r['met'] else 'NO'} | {r['sqnr_db']:.1f} "
            f"| {r['top1_agreement']:.3f} | {task} | {r['exact_evaluations']} "
            f"| {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.strategies", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "model", nargs="?", help="float ONNX model (default: the embedded digits CNN)"
    )
    parser.add_argument("--calib", help="calibration folder (default: the embedded model's)")
    parser.add_argument("--hw", default="arm_a72")
    parser.add_argument("--max-size", default="0.25x")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument(
        "--samples",
        type=int,
        default=8,
        help="calibration samples per sensitivity/exact evaluation",
    )
    args = parser.parse_args(argv)
    if args.model is None:
        model, calibration, eval_fn = (
            str(examples.digits_model_path()),
            examples.digits_calibration(),
            examples.digits_accuracy,
        )
    else:
        model, calibration, eval_fn = args.model, args.calib, None
    rows = run(
        model,
        calibration,
        args.hw,
        args.max_size,
        args.strategies.split(","),
        args.samples,
        eval_fn,
    )
    print(
        markdown(
            rows, f"`{args.model or 'digits'}` on `{args.hw}` under `--max-size {args.max_size}`:"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
