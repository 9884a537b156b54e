"""``mpqc-hw``: list, show, validate and profile hardware specs.

    mpqc-hw list                      bundled specs, one line each
    mpqc-hw show NAME|FILE            the spec as readable tables (precisions, memory,
                                      overheads, ops)
    mpqc-hw validate FILE...          check spec files against the schema
    mpqc-hw profile -o FILE [--threads N] [--quick] [--base NAME]
                                      measure onnxruntime here and write a fitted spec

Bad input never shows a traceback: one line on stderr and exit status 1 (``-v`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.table import Table

from mpqc import hwspecs
from mpqc.core.errors import UsageError
from mpqc.hwspecs import HardwareSpec, SpecError, UnsupportedPrecisionError, native
from mpqc.hwspecs.units import format_quantity

PROG = "mpqc-hw"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="List, show, validate and profile mpqc hardware specs.")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks and profiling progress"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("list", help="list the bundled specs")
    show = commands.add_parser("show", help="show a spec as tables")
    show.add_argument("spec", help="bundled name or path to a spec YAML")
    show.add_argument(
        "--yaml",
        action="store_true",
        help="print the spec's YAML, to copy and edit as the start of your own",
    )
    validate = commands.add_parser("validate", help="validate spec files")
    validate.add_argument("files", nargs="+", type=Path)
    profile = commands.add_parser(
        "profile", help="measure onnxruntime on this machine and write a fitted spec"
    )
    profile.add_argument(
        "-o", "--output", required=True, type=Path, help="spec YAML to write (atomically)"
    )
    profile.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads to fit for (default 1; 1 thread is also measured)",
    )
    profile.add_argument(
        "--quick", action="store_true", help="fewer kernels and repeats (seconds, rougher numbers)"
    )
    profile.add_argument("--base", help="bundled spec to extend (default: from the machine type)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        args = _parser().parse_args(argv)
        return {"list": _list, "show": _show, "validate": _validate, "profile": _profile}[
            args.command
        ](args)
    except (SpecError, UnsupportedPrecisionError, UsageError, OSError, ValueError) as exc:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def _console() -> Console:
    return Console(soft_wrap=False, width=max(100, Console().width))


def _list(args: argparse.Namespace) -> int:
    table = Table("name", "reference", "pairs", "description", box=None, pad_edge=False)
    for name in hwspecs.names():
        spec = hwspecs.load(name)
        reference = "float" if spec.runs_float else "w8a8"
        description = (
            spec.description if len(spec.description) <= 64 else spec.description[:61] + "..."
        )
        table.add_row(name, reference, str(len(spec.supported_pairs())), description)
    cached = native.cache_path()
    state = f"profiled: {cached}" if cached.is_file() else "profiled on first use (about a minute)"
    table.add_row("auto", "", "", f"this machine, {state}")
    _console().print(table)
    return 0


def _editable_yaml(spec: hwspecs.HardwareSpec) -> str:
    """The spec's own file, sources and comments kept, headed by how to make it yours."""
    text = Path(spec.source).read_text(encoding="utf-8")
    return (
        f"# mpqc-hw show {spec.name} --yaml: a copy of {Path(spec.source).name}. Save it as\n"
        "# MY_CHIP.yaml (a `name:` line names the spec, else the file name does), edit the\n"
        "# numbers, and check it with `mpqc-hw validate MY_CHIP.yaml`.\n" + text
    )


def _validate(args: argparse.Namespace) -> int:
    for path in args.files:
        spec = hwspecs.validate(path)
        print(f"{path}: ok ({spec.name}, {len(spec.supported_pairs())} precision pairs)")
    return 0


def _show(args: argparse.Namespace) -> int:
    spec = hwspecs.load(args.spec)
    if args.yaml:
        print(_editable_yaml(spec), end="")
        return 0
    console = _console()
    console.print(f"[bold]{spec.name}[/bold]  ({spec.source})")
    console.print(spec.description)
    reference = "float" if spec.runs_float else "uniform w8a8"
    threads = f", {spec.threads} thread(s)" if spec.threads else ""
    console.print(
        f"weights {list(spec.weight_bits)} bits, activations {list(spec.act_bits)} bits; "
        f"reference: {reference}{threads}"
    )
    for line in _runtime_lines(spec):
        console.print(line)
    console.print(_precision_table(spec))
    if spec.bit_scaling is not None:
        console.print(_speedup_matrix(spec))
    console.print(_memory_table(spec))
    if spec.overheads:
        console.print(_overhead_table(spec))
    if spec.ops:
        ops = Table(
            "op", "instructions (inputs -> output)", title="ops (HAGO)", title_justify="left"
        )
        for op, instructions in sorted(spec.ops.items()):
            ops.add_row(op, "; ".join(map(str, instructions)))
        console.print(ops)
    return 0


def _runtime_lines(spec: HardwareSpec) -> list[str]:
    """How the runtime shapes costs beyond the tables: call overhead, fusions, layouts, operand
    packing."""
    lines = []
    if spec.session_overhead:
        lines.append(f"each inference call: {format_quantity(spec.session_overhead, 'time')}")
    for kind, ops in sorted(spec.fused_activations.items()):
        lines.append(
            f"fused into {'an' if kind == 'integer' else 'a'} {kind} kernel: "
            f"{', '.join(sorted(ops)) or 'none'}"
        )
    for op, relayout in sorted(spec.integer_layout.items()):
        lines.append(
            f"integer {op} runs in another layout: a {relayout} in and out of each run of them"
        )
    if spec.packed_operands:
        lines.append("operands move at exactly their bit-width (packed), not in ONNX containers")
    return lines


def _precision_table(spec: HardwareSpec) -> Table:
    table = Table(
        "pair",
        "throughput",
        "depthwise",
        "energy/MAC",
        "runs as",
        title="precisions",
        title_justify="left",
    )
    reference = spec.precision(*spec.reference_pair).throughput
    for key, p in spec.precisions.items():
        runs_as = "native" if p.native else f"emulated as {p.emulated_as}"
        if p.weight_unpack is not None:
            runs_as += f", unpack {format_quantity(p.weight_unpack, 'time')}/weight"
        for op, unpack in sorted(p.weight_unpack_ops.items()):
            runs_as += f" ({op}: {format_quantity(unpack, 'time')})"
        speed = (
            f"{format_quantity(p.throughput, 'throughput')} ({p.throughput / reference:.2g}x ref)"
        )
        depthwise = (
            "same"
            if p.depthwise_throughput is None
            else format_quantity(p.depthwise_throughput, "throughput")
        )
        table.add_row(key, speed, depthwise, format_quantity(p.energy_per_mac, "energy"), runs_as)
    if spec.bit_scaling is not None:
        cap = (
            ""
            if math.isinf(spec.bit_scaling.max_speedup)
            else f", capped at {spec.bit_scaling.max_speedup:g}x"
        )
        table.caption = (
            "other pairs: throughput ∝ 1/(w·a) and energy ∝ w·a "
            f"from {spec.bit_scaling.anchor.key}{cap}"
        )
    return table


def _speedup_matrix(spec: HardwareSpec) -> Table:
    reference = spec.precision(*spec.reference_pair).throughput
    table = Table(
        "w \\ a",
        *map(str, spec.act_bits),
        title="throughput relative to the reference",
        title_justify="left",
        min_width=40,
    )
    for w in spec.weight_bits:
        cells = [
            f"{spec.precision(w, a).throughput / reference:.3g}" if spec.supports(w, a) else "-"
            for a in spec.act_bits
        ]
        table.add_row(str(w), *cells)
    return table


def _memory_table(spec: HardwareSpec) -> Table:
    table = Table(
        "level",
        "capacity",
        "bandwidth",
        "energy/byte",
        title="memory (nearest first)",
        title_justify="left",
    )
    for level in spec.memory:
        table.add_row(
            level.name,
            format_quantity(level.capacity, "bytes"),
            format_quantity(level.bandwidth, "bandwidth"),
            format_quantity(level.energy_per_byte, "energy"),
        )
    return table


def _overhead_table(spec: HardwareSpec) -> Table:
    table = Table("op", "fixed", "per element", title="overheads", title_justify="left")
    for op, overhead in sorted(spec.overheads.items()):
        table.add_row(
            op,
            format_quantity(overhead.fixed, "time"),
            format_quantity(overhead.per_element, "time"),
        )
    return table


def _profile(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    output: Path = args.output
    if output.is_dir() or not output.parent.is_dir():
        raise UsageError(f"-o {output}: not a file path in an existing directory")
    if args.base:
        hwspecs.load(args.base)
    from mpqc.hwspecs import profiling  # imports onnx/onnxruntime: only when profiling
    from mpqc.hwspecs.machine import base_for_machine

    base = args.base or base_for_machine()
    log = (lambda line: print(line, file=sys.stderr)) if args.verbose else (lambda line: None)
    document = profiling.profile(base, args.threads, args.quick, log)
    header = (
        f"Written by `{PROG} profile{' --quick' if args.quick else ''} --threads {args.threads}`; "
        "measured numbers, see provenance."
    )
    profiling.write_spec(document, output, header)
    fit = document["provenance"]["fits"][f"threads_{args.threads}"]
    print(
        f"wrote {output} (base {base}; throughput GMAC/s {fit['throughput_GMAC_s']}; "
        f"rms log error {fit['rms_log_error']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
