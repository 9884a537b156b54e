"""``mpqc-opt``: run any pipeline on a model, like ``mlir-opt``.

    mpqc-opt model.onnx -p 'canonicalize,calibrate,lower-qdq{uniform=w4a8},verify' \\
        -o out.onnx --calib data/
    mpqc-opt --help-passes

Compiler people use it to run one pass at a time, save annotated models between passes, and read IR
dumps. The pipeline ``mpqc`` runs is the named pipeline ``default{...}``, and the inputs of a
compilation (``--hw``, ``--calib``, budgets, candidate bits, ``--shape``) are the same flags as
``mpqc``'s, so ``mpqc-opt -p 'default{uniform=w4a8}'`` writes the file ``mpqc --uniform w4a8`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from mpqc.ir.outputs import Outputs

__all__ = ["main"]


def _type_name(hint: object) -> str:
    """'int', 'tuple[str, ...]', or the choices of a Literal ('minmax|percentile|...')."""
    if typing.get_origin(hint) is typing.Literal:
        return "|".join(map(str, typing.get_args(hint)))
    if typing.get_args(hint):
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def help_passes() -> str:
    """Every registered pass: what it reads and writes, and its options (type, default, meaning).

    A pass that forwards options to a component (``search`` and its strategies) lists each
    component's options too, under ``with NAME``: they are given as the pass's own
    (``search{strategy=nsga2,generations=100}``).
    """
    from mpqc import passes
    from mpqc.passes import NamedPipeline

    lines = []
    for name in passes.names():
        cls = passes.get(name)
        summary = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        lines.append(f"{name}\n    {summary}")
        if issubclass(cls, NamedPipeline):
            lines.append("    a named pipeline: stands for the passes it expands to")
            lines += _options(cls.Options, "    ")
            continue
        contract = _contract(cls)
        if contract:
            lines.append(f"    {contract}")
        lines += _options(cls.Options, "    ")
        for component, options_class in cls.components().items():
            lines.append(f"    with {cls.forwards[0]}={component}:")
            lines += _options(options_class, "      ")
    return "\n".join(lines)


def _contract(cls: type) -> str:
    """'reads mpqc.cost; writes mpqc.bits': the annotation keys of the pass's contract."""
    parts = [
        f"{role} {', '.join(sorted(key.name for key in keys))}"
        for role, keys in (
            ("reads", cls.reads),
            ("may read", cls.may_read),
            ("writes", cls.writes),
        )
        if keys
    ]
    return "; ".join(parts)


def _options(options_class: type, indent: str) -> list[str]:
    """One entry per option pipeline text can set (a callable option cannot be written)."""
    from mpqc.passes.infra.pipeline import text_options

    hints = typing.get_type_hints(options_class)
    fields = {field.name: field for field in dataclasses.fields(options_class)}
    lines = []
    for name in text_options(options_class):
        field = fields[name]
        # mpqc.search documents its options under "help" (it knows nothing of passes).
        doc = field.metadata.get("doc") or field.metadata.get("help", "")
        lines.append(
            f"{indent}{name}: {_type_name(hints[name])} = {field.default!r}\n{indent}    {doc}"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="mpqc-opt", description="Run an mpqc pass pipeline on an ONNX model."
    )
    parser.add_argument("model", nargs="?", help="input ONNX model")
    parser.add_argument(
        "-p",
        "--pipeline",
        help="pipeline string, e.g. 'canonicalize,calibrate,lower-qdq{uniform=w8a8}'",
    )
    parser.add_argument(
        "-o", "--output", help="where to write the resulting model (omit to only analyse)"
    )
    add_compilation_arguments(parser, hw_required=False)
    parser.add_argument(
        "--report-json", metavar="FILE", help="write the model's mpqc annotations as JSON"
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="time the result against the (float) input model and its uniform w8a8 lowering on "
        "this machine, next to the cost model's predictions",
    )
    parser.add_argument(
        "--help-passes", action="store_true", help="list passes and their options, then exit"
    )
    add_ir_dump_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    return parser


def _annotations_json(model) -> dict:
    """Every mpqc annotation of the model, grouped by scope and object name."""
    from mpqc.ir.annotations import annotated

    out: dict[str, dict[str, dict]] = {"model": {}, "nodes": {}, "values": {}}
    for obj in annotated(model):
        props = {
            k: json.loads(v) for k, v in sorted(obj.metadata_props.items()) if k.startswith("mpqc.")
        }
        if not props:
            continue
        if obj is model:
            out["model"].update(props)
        elif hasattr(obj, "op_type"):
            out["nodes"][obj.name or obj.outputs[0].name] = props
        else:
            out["values"][obj.name] = props
    return out


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, outputs: Outputs) -> int:
    if args.help_passes:
        print(help_passes())
        return EXIT_OK
    if not args.model or not args.pipeline:
        parser.error("a model and -p PIPELINE are required (or --help-passes)")
    from mpqc import ir as mir
    from mpqc.options import CompileOptions, compilation_context
    from mpqc.passes.lib.runnable import check_runnable
    from mpqc.pipeline import Pipeline

    protect_inputs(outputs, args.model, args)
    output = outputs.claim_model(args.output, "output") if args.output else None
    report_json = outputs.claim(args.report_json, "report_json") if args.report_json else None
    if args.ir_dump_dir:
        outputs.claim_folder(args.ir_dump_dir, "ir_dump_dir")
    model = mir.load(args.model)
    check_runnable(model, str(args.model))
    for data in model.meta.get(mir.io.EXTERNAL_FILES, ()):
        outputs.protect(data, "the input model's external data")
    fields = {field.name for field in dataclasses.fields(CompileOptions)}
    given = {name: value for name, value in vars(args).items() if name in fields}
    context = compilation_context(model, CompileOptions(**{**given, "shapes": dict(args.shapes)}))
    instruments = ir_printer(args)
    reference = None
    if args.measure:
        reference = _float_reference(model, Pipeline(args.pipeline, context).expanded())
        instruments.append(reference)
    pipeline = Pipeline(args.pipeline, context, instruments, args.verify_each)
    model = pipeline.run_ir(model)
    measurement = None
    if reference is not None:
        from mpqc.measure import measure

        measurement = measure(reference, model, context, pipeline.expanded())
    with outputs.commit() as staging:
        if output is not None:
            staging.model(model, output)
        if report_json is not None:
            report = {"pipeline": str(pipeline), "notes": context.notes, **_annotations_json(model)}
            if measurement is not None:
                report["measured"] = measurement.to_json()
            staging.text(json.dumps(report, indent=2, sort_keys=True) + "\n", report_json)
    for note in context.notes:
        print(f"mpqc-opt: note: {note}", file=sys.stderr)
    _print_runtime(model, measurement)
    return EXIT_OK


def _float_reference(model, pipeline: str):
    """What ``--measure`` keeps of the input, the float model; refused when it is already
    quantized."""
    from mpqc.measure import FloatReference
    from mpqc.passes import PassInputError

    if any(node.op_type in ("DequantizeLinear", "QuantizeLinear") for node in model.graph):
        raise PassInputError(
            "times the result against the float model: give mpqc-opt a float model",
            field="measure",
        )
    return FloatReference(pipeline, model)


def _print_runtime(model, measurement) -> None:
    """verify's fusion warnings (stderr) and the measurement (stdout)."""
    from mpqc.ir import annotations
    from mpqc.report_runtime import measured_lines

    verify = annotations.REPORT.section(model, "verify") or {}
    for warning in verify.get("kernels", {}).get("warnings", []):
        print(f"mpqc-opt: warning: {warning}", file=sys.stderr)
    if measurement is not None:
        print("\n".join(f"mpqc-opt: measured: {line}" for line in measured_lines(measurement)))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mpqc.ir.outputs import Outputs

    outputs = Outputs()
    return run_command(
        "mpqc-opt", lambda: _run(args, parser, outputs), args.verbose, flag_names(parser), outputs
    )


if __name__ == "__main__":
    sys.exit(main())
