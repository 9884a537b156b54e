"""``python -m bench.recover``: task accuracy with and without the ``recover`` pass (RESULTS.md §6).

For each model, each weight configuration is compiled twice or more from the same calibrated model —
plain rounding (``lower-qdq`` alone) and with ``recover`` in its variants — and every result is
scored on the task's evaluation set. Configurations:

- ``w4a8``, ``w3a8``, ``w2a8``: every quantizable layer at those bits (first and last included —
  uniform bits pin nothing);
- ``mixed``: the default search (ilp over {w4a8, w8a8}, first and last compute layers pinned at 8
  bits) under a size budget, then lowered with and without recovery;
- ``weight-only``: ``--weight-only`` (4-bit MatMulNBits, block 32, float activations), the
  transformer case GPTQ was made for.

Recover's wall time is the pass's own (the compiler's timing instrument), also given as a ratio to
``calibrate`` on the same model in the same run, which stays meaningful on a busy machine.
Models: the embedded digits CNN (accuracy on its evaluation split) and the real models of
``bench/models.py`` (their task's primary metric on their evaluation set).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mpqc
from mpqc import examples
from mpqc import ir as mir

#: Variants of recovery compared; "" is plain rounding.
VARIANTS = {
    "plain": "",
    "recover": "recover{uniform=%s}",
    "recover-float-inputs": "recover{uniform=%s,inputs=float}",
    "recover-clip-search": "recover{uniform=%s,clip_search=true}",
    "bias-correction-only": "recover{uniform=%s,method=round}",
}


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    calibration: list[dict]
    score: Callable[[pathlib.Path], float]
    metric: str
    mixed_budget: str


def digits_case(mixed_budget: str) -> Case:
    return Case(
        "digits",
        str(examples.digits_model_path()),
        examples.digits_calibration(),
        examples.digits_accuracy,
        "accuracy",
        mixed_budget,
    )


def real_case(name: str, n_eval: int | None, mixed_budget: str) -> Case:
    from bench import models as registry
    from bench.measure import runner, session
    from bench.tasks.base import TaskSizes

    entry = registry.get(name)
    sizes = (
        entry.sizes if n_eval is None else TaskSizes(n_eval, entry.sizes.n_calib, entry.sizes.seed)
    )
    task = entry.task(sizes)

    def score(path: pathlib.Path) -> float:
        return float(
            task.evaluate(runner(session(path, 2), task.output_names)).metrics[task.primary_metric]
        )

    return Case(
        name,
        str(entry.float_path()),
        task.calibration_inputs,
        score,
        task.primary_metric,
        mixed_budget,
    )


def _compile(
    case: Case, folder: pathlib.Path, label: str, **kwargs: Any
) -> tuple[float, dict[str, float], list[str]]:
    result = mpqc.compile(
        case.model, mpqc.CompileOptions(hw="generic", calibration=case.calibration, **kwargs)
    )
    path = mir.save(result.ir_model, folder / f"{case.name}-{label}.onnx")
    seconds = {name: s for name, s in result.timing}
    return (
        case.score(path),
        seconds,
        [n for n in result.notes if n.startswith("recover:") and "reconstructed" in n],
    )


def run_case(
    case: Case, configs: Sequence[str], variants: Sequence[str], log=print
) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpqc-bench-recover-") as scratch:
        folder = pathlib.Path(scratch)
        float_score = case.score(pathlib.Path(case.model))
        log(f"[{case.name}] float {case.metric} {float_score:.4f}")
        for config in configs:
            for variant in variants:
                if config in ("mixed", "weight-only"):
                    if variant not in ("plain", "recover"):
                        continue
                    kwargs: dict[str, Any] = {"recover": variant == "recover"}
                    kwargs.update(
                        {"max_size": case.mixed_budget}
                        if config == "mixed"
                        else {"weight_only": True}
                    )
                else:
                    step = VARIANTS[variant] % config if VARIANTS[variant] else ""
                    kwargs = {
                        "pipeline": ",".join(
                            filter(
                                None,
                                [
                                    "canonicalize",
                                    "calibrate",
                                    step,
                                    f"lower-qdq{{uniform={config}}}",
                                ],
                            )
                        )
                    }
                score, seconds, notes = _compile(case, folder, f"{config}-{variant}", **kwargs)
                row = {
                    "config": config,
                    "variant": variant,
                    "score": score,
                    "drop": float_score - score,
                    "recover_s": seconds.get("recover"),
                    "recover_vs_calibrate": seconds["recover"] / seconds["calibrate"]
                    if {"recover", "calibrate"} <= set(seconds)
                    else None,
                    "notes": notes,
                }
                log(
                    f"[{case.name}] {config:5s} {variant:22s} {case.metric} {score:.4f}  "
                    f"drop {row['drop']:+.4f}  recover {row['recover_s'] or 0:.1f}s"
                )
                rows.append(row)
    return {
        "metric": case.metric,
        "float": float_score,
        "mixed_budget": case.mixed_budget,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.recover", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--models",
        default="digits,orientation,ppocr-rec",
        help="digits and/or names from bench/models.py",
    )
    parser.add_argument("--configs", default="w4a8,w3a8,w2a8,mixed")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help="evaluation samples of the real models (default: the task's)",
    )
    parser.add_argument(
        "--mixed-budget",
        default="0.2x",
        help="size budget of the mixed configuration (about halfway between all-4 and all-8 bits)",
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/recover.json"))
    args = parser.parse_args(argv)
    results = {}
    for name in args.models.split(","):
        case = (
            digits_case(args.mixed_budget)
            if name == "digits"
            else real_case(name, args.n_eval, args.mixed_budget)
        )
        results[name] = run_case(
            case,
            args.configs.split(","),
            args.variants.split(","),
            log=lambda line: print(line, flush=True),
        )
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
