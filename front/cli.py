"""The ``mpqc`` command: quantize a model for a chip, write it, say what was done.

    mpqc model.onnx --hw arm_a72 -o model.q.onnx --calib calib/ --uniform w8a8

Without a model it compiles mpqc's embedded example (a CNN trained on scikit-learn's digits, with
its own calibration data and accuracy metric), so a new user sees the whole flow in one command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any, get_args

from mpqc.cli_support import (
    EXIT_OK,
    ArgumentParser,
    add_compilation_arguments,
    add_ir_dump_arguments,
    flag_names,
    ir_printer,
    protect_inputs,
    run_command,
)
from mpqc.cluster import dask_executor
from mpqc.passes.analysis.calibrate import Method

if TYPE_CHECKING:
    from mpqc.ir.outputs import Outputs, Staging

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The flags; each one's ``dest`` is the ``CompileOptions`` field it fills."""
    parser = ArgumentParser(
        prog="mpqc",
        description="Mixed-precision quantization compiler for ONNX.",
        epilog="Exit codes: 0 ok, 1 bad input (one line on stderr), 2 infeasible constraints, "
        "130/143 interrupted (SIGINT/SIGTERM).",
    )
    parser.add_argument(
        "model", nargs="?", help="float ONNX model (default: the embedded digits CNN)"
    )
    parser.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    add_compilation_arguments(parser, hw_required=True)
    parser.add_argument(
        "--calib-method",
        dest="calibrate_method",
        default="minmax",
        choices=get_args(Method),
        help="activation range estimator (best: the one that damages the whole model's output "
        "least; auto: per activation, the one that damages the output least)",
    )
    parser.add_argument(
        "--uniform",
        type=_bit_choice,
        default=argparse.SUPPRESS,
        metavar="wXaY",
        help="same bits for every layer, e.g. w8a8, w4a8, w8a16",
    )
    parser.add_argument(
        "--weight-only",
        action="store_true",
        help="float activations, weights at --uniform's width (default 4); "
        "MatMuls as onnxruntime's MatMulNBits",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=0,
        metavar="N",
        help="quantize MatMul/Gemm weights per block of N along K (16, 32, 64, 128...)",
    )
    parser.add_argument(
        "--strategy", default="ilp", help="bit-width search strategy (default: ilp)"
    )
    parser.add_argument(
        "--recover",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GPTQ rounding and bias correction of layers below 8-bit weights "
        "(default: on when --calib is given)",
    )
    parser.add_argument(
        "--plan",
        default="",
        metavar="FILE",
        help="lower this plan instead of searching: a --plan-out .yaml (edited or not) "
        "or onnxruntime's TensorQuantOverrides .json",
    )
    parser.add_argument(
        "--plan-out",
        metavar="FILE",
        help="write every layer's bits and layout: .yaml (one layer per line) or "
        ".json (onnxruntime's TensorQuantOverrides and customized_weight_config)",
    )
    parser.add_argument("--pipeline", "-p", help="run this pipeline string instead of the default")
    parser.add_argument(
        "--report-json", metavar="FILE", help="write the compilation report as JSON"
    )
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="write the per-layer table (bits, candidates, why) as .html or .md",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="time the written model against float and uniform w8a8 on this machine (onnxruntime, "
        "1 thread, paired runs, median) and print measured against predicted latency",
    )
    parser.add_argument(
        "--emit-pareto", metavar="DIR", help="also lower every point of the searched front into DIR"
    )
    parser.add_argument(
        "--executor",
        metavar="ADDRESS",
        help="run exact evaluations on a Dask cluster, e.g. tcp://host:8786",
    )
    add_ir_dump_arguments(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks and per-pass timing"
    )
    return parser


def _bit_choice(text: str) -> str:
    """``--uniform``'s value, which cannot be blank: ``--uniform ""`` would mean no uniform bits
    and silently run the search instead."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a bit choice such as w8a8, w4a8 or w8a16")
    return text


def _resolve_model(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(model, calibration, eval_fn): the user's, or the embedded example's."""
    if args.model is not None:
        return args.model, args.calibration, args.eval_fn
    from mpqc import examples

    calibration = args.calibration
    if calibration is None:
        calibration = examples.digits_calibration()
    return str(examples.digits_model_path()), calibration, args.eval_fn or examples.digits_accuracy


def _layer_bits(result: Any) -> dict[str, dict[str, int]]:
    from mpqc.ir import annotations

    # Read the annotation from the nodes: once lowered, a layer's weight sits behind a
    # DequantizeLinear and quantizable_layers() no longer sees it as a layer.
    graph = result.ir_model.graph
    return {
        node.name or node.outputs[0].name: annotations.BITS.get(node)
        for node in graph
        if annotations.BITS.has(node)
    }


def _tensor_sizes(result: Any) -> str:
    """The size --max-size counts: tensor bytes, against the cost pass's reference when it ran.

    The file also holds the graph (names, nodes, annotations), which on a small model is a large
    share of it; a budget on tensors met exactly can look missed in file bytes without this second
    figure.
    """
    from mpqc.ir import annotations, tensor_bytes

    written = tensor_bytes(result.ir_model)
    reference = (annotations.MODEL_COST.get(result.ir_model) or {}).get("reference", {}).get("size")
    if not reference:
        return f"; tensors {written / 1e6:.3f} MB"
    return (
        f"; tensors {reference / 1e6:.3f} MB -> {written / 1e6:.3f} MB "
        f"({written / reference:.2f}x, what --max-size counts)"
    )


def _summary(args: argparse.Namespace, result: Any, input_bytes: int, output_bytes: int) -> str:
    from mpqc.ir import annotations

    bits = _layer_bits(result)
    mix = Counter(annotations.chosen_bits(b).text() for b in bits.values())
    verify = result.report.get("verify", {})
    lines = [
        f"mpqc: {args.model or 'embedded digits CNN'} -> {args.output}  (hw {args.hw})",
        f"  layers      {len(bits)} quantized: "
        + ", ".join(f"{n}x {k}" for k, n in sorted(mix.items())),
        f"  size        {input_bytes / 1e6:.3f} MB -> {output_bytes / 1e6:.3f} MB "
        f"({output_bytes / max(input_bytes, 1):.2f}x)" + _tensor_sizes(result),
    ]
    if "sqnr_db" in verify:
        # float(): annotations store non-finite numbers as text ("inf" when the output is unchanged)
        lines.append(
            f"  fidelity    output SQNR {float(verify['sqnr_db']):.1f} dB"
            + (
                f", top-1 agreement {verify['top1_agreement']:.3f}"
                if "top1_agreement" in verify
                else ""
            )
            + f" on {verify.get('samples', 0)} {verify.get('samples_from', 'held-out')} samples"
        )
    if "task_metric" in verify:
        lines.append(
            f"  accuracy    {verify['task_metric']:.4f} "
            f"(float {verify.get('task_metric_float', float('nan')):.4f})"
        )
    if "kernels" in verify:
        from mpqc.report_runtime import kernel_summary

        lines.append(f"  kernels     {kernel_summary(verify['kernels'])}")
        warnings = verify["kernels"].get("warnings", [])
        lines += [f"  warning     {text}" for text in warnings[:_WARNINGS_SHOWN]]
        if len(warnings) > _WARNINGS_SHOWN:
            more = len(warnings) - _WARNINGS_SHOWN
            lines.append(
                f"  warning     ... and {more} more"
                + (f" (see {args.report})" if args.report else " (--report lists them)")
            )
    if result.measurement is not None:
        lines += _measured_lines(result.measurement)
    if result.explanation is not None and result.explanation.strategy:
        lines.append(
            f"  kept high   {result.explanation.summary()}"
            + (f" (see {args.report})" if args.report else "")
        )
    lines += [f"  note        {note}" for note in result.notes]
    if args.verbose:
        lines += [f"  pass        {name:<24} {seconds:8.3f} s" for name, seconds in result.timing]
    return "\n".join(lines)


#: Fusion warnings the summary prints; the report lists them all.
_WARNINGS_SHOWN = 8


def _measured_lines(measurement: Any) -> list[str]:
    from mpqc.report_runtime import measured_lines

    first, *rest = measured_lines(measurement)
    return [f"  measured    {first}", *(f"              {line}" for line in rest)]


def _run(args: argparse.Namespace, outputs: Outputs) -> int:
    """Check every output, compile, then write the model and the reports as one commit."""
    from mpqc import ir as mir
    from mpqc.passes.choose.plan import check_plan_path
    from mpqc.report import check_format, render

    model, calibration, eval_fn = _resolve_model(args)
    protect_inputs(outputs, model, args)
    output = outputs.claim_model(args.output, "output")
    report_json = outputs.claim(args.report_json, "report_json") if args.report_json else None
    report = outputs.claim(args.report, "report") if args.report else None
    if report is not None:
        check_format(report)
    for folder in ("emit_pareto", "ir_dump_dir"):
        if getattr(args, folder):
            outputs.claim_folder(getattr(args, folder), folder)
    if args.plan_out:
        check_plan_path(outputs.claim(args.plan_out, "plan_out"), field="plan_out")
    with outputs.commit() as staging:
        with dask_executor(args.executor) as executor:
            result = _compile(args, model, calibration, eval_fn, executor, staging)
        input_bytes = mir.file_bytes(model) if isinstance(model, str) else 0
        output_bytes = mir.file_bytes(staging.model(result.ir_model, output))
        if report_json is not None:
            sizes = {"input": input_bytes, "output": output_bytes}
            staging.text(_report_json(args, result, sizes), report_json)
        if report is not None and result.explanation is not None:
            title = f"mpqc: {args.model or 'embedded digits CNN'} on {args.hw}"
            page = render(
                result.explanation,
                report,
                title,
                result.pareto,
                result.timing,
                result.report.get("verify", {}).get("kernels"),
                result.measurement,
            )
            staging.text(page, report)
    if not args.quiet:
        print(_summary(args, result, input_bytes, output_bytes))
    return EXIT_OK


def _compile(
    args: argparse.Namespace,
    model: Any,
    calibration: Any,
    eval_fn: Any,
    executor: Any,
    staging: Staging,
) -> Any:
    import mpqc

    fields = {field.name for field in dataclasses.fields(mpqc.CompileOptions)}
    given = {name: value for name, value in vars(args).items() if name in fields}
    options = mpqc.CompileOptions(
        **{
            **given,
            "calibration": calibration,
            "eval_fn": eval_fn,
            "shapes": dict(args.shapes),
            "executor": executor,
            "instruments": tuple(ir_printer(args)),
            "progress": not args.quiet,
        }
    )
    return mpqc.compile(model, options, staging=staging)


def _report_json(args: argparse.Namespace, result: Any, sizes: dict[str, int]) -> str:
    """``--report-json``: the whole compilation, canonical JSON."""
    from mpqc.ir.annotations import canonical_json

    report = {
        "model": args.model or "embedded:digits_cnn",
        "output": str(pathlib.Path(args.output)),
        "hw": args.hw,
        "pipeline": result.pipeline,
        "bytes": sizes,
        "bits": _layer_bits(result),
        "report": dict(result.report),
        "pareto": result.pareto,
        "notes": list(result.notes),
        "emitted": [str(path) for path in result.emitted],
        "explanation": result.explanation.to_json() if result.explanation else None,
        "measured": result.measurement.to_json() if result.measurement else None,
    }
    return json.dumps(json.loads(canonical_json(report)), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mpqc.ir.outputs import Outputs

    outputs = Outputs()
    return run_command(
        "mpqc", lambda: _run(args, outputs), args.verbose, flag_names(parser), outputs
    )


if __name__ == "__main__":
    sys.exit(main())
