"""What every mpqc command shares: error handling, IR dump flags, exit codes.

Bad input must give one clear line and exit code 1 (2 for infeasible constraints), with the
traceback only under ``-v``; unexpected failures say they are internal so the user knows to report
them. Keeping this in one place makes ``mpqc``, ``mpqc-opt`` and ``mpqc-hw`` behave alike.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import os
import pathlib
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from mpqc.core.errors import MpqcError
from mpqc.passes.infra.instruments import Instrument, IRPrinter

if TYPE_CHECKING:
    from mpqc.ir.outputs import Outputs

__all__ = [
    "ArgumentParser",
    "EXIT_INFEASIBLE",
    "EXIT_OK",
    "EXIT_USER",
    "add_compilation_arguments",
    "add_ir_dump_arguments",
    "flag_names",
    "ir_printer",
    "protect_inputs",
    "run_command",
]

EXIT_OK, EXIT_USER, EXIT_INFEASIBLE = 0, 1, 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with mpqc's exit codes: a bad command line is a user error (1, one line).

    argparse's own exit code for usage errors is 2, which for mpqc means infeasible constraints,
    and it prints the whole usage block before the message.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER, f"{self.prog}: {message} (see {self.prog} --help)\n")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the input is wrong', from every layer."""
    import onnx_ir as ir

    return (
        MpqcError,
        ir.passes.PreconditionError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    )


def infeasible_errors() -> tuple[type[BaseException], ...]:
    from mpqc.search import InfeasibleError

    return (InfeasibleError,)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, so that it stops as on Ctrl-C: staged files removed,
    one line saying what was written."""


def _terminate(signum: int, frame: object) -> NoReturn:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like SIGINT while the command runs (Python's default ends the process at once,
    leaving staged files behind). Signal handlers belong to the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_command(
    prog: str,
    body: Callable[[], int],
    verbose: bool,
    flags: Mapping[str, str] | None = None,
    outputs: Outputs | None = None,
) -> int:
    """Run ``body``; turn exceptions into one line on stderr and an exit code.

    An error about one option names it by its field (``max_size``); ``flags`` (``flag_names``)
    turns that into the command's own spelling (``--max-size``), the one the user typed.

    SIGINT and SIGTERM stop the run with exit code 128 + the signal's number and a line that says
    what ``outputs`` (the files ``body`` writes) holds: nothing, or everything, its commit being
    atomic.

    Python warnings from the libraries underneath (numpy, scipy, onnxruntime's Python layer) are
    shown only under ``-v``: what the user needs to know reaches them as notes in the summary, and
    ``-q`` promises silence on success.
    """
    try:
        with warnings.catch_warnings(), _sigterm_as_interrupt():
            if not verbose:
                warnings.simplefilter("ignore")
            return body()
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        written = ", ".join(map(str, outputs.written)) if outputs is not None else ""
        what = f"after writing {written}" if written else "nothing was written"
        print(f"{prog}: interrupted by {signum.name}; {what}", file=sys.stderr)
        return 128 + signum
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and an exit code
        if isinstance(exc, SystemExit):
            raise
        if verbose:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, MpqcError) and exc.field is not None:
            name = (flags or {}).get(exc.field, exc.field)
            first = f"{name}: " + (exc.message.splitlines() or [""])[0]
        if isinstance(exc, infeasible_errors()):
            print(f"{prog}: {first}", file=sys.stderr)
            return EXIT_INFEASIBLE
        if isinstance(exc, user_errors()):
            print(f"{prog}: {first}", file=sys.stderr)
        else:
            hint = "" if verbose else " (run with -v for the traceback)"
            print(f"{prog}: internal error: {type(exc).__name__}: {first}{hint}", file=sys.stderr)
        return EXIT_USER


def protect_inputs(outputs: Outputs, model: Any, args: argparse.Namespace) -> None:
    """Mark the files a compilation reads as ``outputs``' inputs, which no output may be: the
    model, a spec file, the calibration data, a plan and the task metric's file."""
    if isinstance(model, (str, os.PathLike)):
        outputs.protect(model, "the input model")
    if isinstance(args.hw, str) and pathlib.Path(args.hw).is_file():
        outputs.protect(args.hw, "the hardware spec")
    if isinstance(args.calibration, (str, os.PathLike)):
        outputs.protect(args.calibration, "the calibration data")
    if getattr(args, "plan", ""):
        outputs.protect(args.plan, "the plan to lower")
    if args.eval_fn is not None:
        with contextlib.suppress(TypeError):  # a builtin or C function has no file
            source = inspect.getsourcefile(args.eval_fn)
            if source is not None:
                outputs.protect(source, "the task metric's file")


def add_ir_dump_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("IR dumps (MLIR-style)")
    group.add_argument(
        "--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)"
    )
    group.add_argument(
        "--print-ir-after",
        metavar="PASS",
        action="append",
        default=[],
        help="print the IR after PASS (repeatable)",
    )
    group.add_argument(
        "--print-ir-after-change",
        action="store_true",
        help="print the IR after passes that changed it",
    )
    group.add_argument(
        "--ir-dump-dir", metavar="DIR", help="write dumps to DIR/NNN_<pass>.txt instead of stderr"
    )
    group.add_argument(
        "--verify-each",
        action="store_true",
        help="check the model (onnx checker, onnxruntime load) after every pass; name the pass "
        "that breaks it",
    )


def ir_printer(args: argparse.Namespace) -> list[Instrument]:
    from mpqc import passes

    for name in args.print_ir_after:
        passes.get(name)  # a misspelt pass would otherwise print nothing, silently
    printer = IRPrinter(
        after_all=args.print_ir_after_all,
        after=frozenset(args.print_ir_after),
        after_change=args.print_ir_after_change,
        dump_dir=args.ir_dump_dir,
    )
    return [printer] if printer.active else []


def add_compilation_arguments(parser: argparse.ArgumentParser, hw_required: bool) -> None:
    """The inputs of a compilation, shared by ``mpqc`` and ``mpqc-opt``: chip, data, task metric,
    shapes, budgets, candidate bits and seed. Each flag's ``dest`` is its ``CompileOptions``
    field."""
    parser.add_argument(
        "--hw",
        required=hw_required,
        help=(
            "hardware spec: a bundled name (see mpqc-hw list), a .yaml path, or auto: this "
            "machine, profiled once (about a minute) and cached"
        ),
    )
    parser.add_argument(
        "--calib",
        dest="calibration",
        metavar="DIR",
        help="calibration samples: .npz files (keys = input names) or .npy files",
    )
    parser.add_argument(
        "--max-size", help="size budget: a ratio of the reference (0.25x) or bytes (3MB)"
    )
    parser.add_argument("--max-latency", help="latency budget, e.g. 2ms")
    parser.add_argument("--max-energy", help="energy budget, e.g. 5mJ")
    parser.add_argument("--max-bops", help="bit-operations budget, e.g. 2G")
    parser.add_argument(
        "--wbits",
        type=_bit_list,
        help="candidate weight bits, e.g. 2,4,8 (default: 4,8, plus 2 where native)",
    )
    parser.add_argument(
        "--abits", type=_bit_list, help="candidate activation bits, e.g. 8,16 (default: 8)"
    )
    parser.add_argument(
        "--shape",
        dest="shapes",
        action="append",
        default=[],
        type=_shape,
        metavar="DIM=SIZE",
        help="size of a symbolic dim, or INPUT=d0,d1,... for an input's shape (repeatable)",
    )
    parser.add_argument(
        "--eval",
        dest="eval_fn",
        metavar="MODULE:FUNCTION",
        type=task_metric_function,
        help="task metric: a function taking an onnx.ModelProto and returning a number, "
        "higher is better (MODULE is an importable module or a .py file), used by verify and "
        "sensitivity-task",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same output)")


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Option field (an argument's ``dest``) -> the flag that sets it, for error messages."""
    return {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings
    }


def _bit_list(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(sorted({int(b) for b in text.split(",") if b.strip()}, reverse=True))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of bit-widths such as 4,8"
        ) from None
    if not bits or any(not 2 <= b <= 16 for b in bits):
        raise argparse.ArgumentTypeError(f"bit-widths must be between 2 and 16, got '{text}'")
    return bits


def _shape(text: str) -> tuple[str, int | tuple[int, ...]]:
    """``DIM=SIZE`` for a named symbolic dim, or ``INPUT=d0,d1,...`` for an input's whole shape."""
    name, _, sizes = text.partition("=")
    dims = sizes.split(",")
    if not name or not all(d.isdigit() and int(d) >= 1 for d in dims):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not DIM=SIZE or INPUT=d0,d1,..., e.g. N=1 or x=1,3,48,320"
        )
    return (name, int(dims[0])) if len(dims) == 1 else (name, tuple(int(d) for d in dims))


def task_metric_function(text: str) -> Callable[[Any], float]:
    """``module:function`` or ``path/to/file.py:function``, imported: the user's task metric."""
    module_name, _, function_name = text.rpartition(":")
    if not module_name or not function_name:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not MODULE:FUNCTION, e.g. mytask:accuracy or eval.py:accuracy"
        )
    try:
        if module_name.endswith(".py"):
            path = pathlib.Path(module_name)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ImportError(f"no such file {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module: any failure to import is bad input
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise argparse.ArgumentTypeError(
            f"cannot import '{module_name}': {type(exc).__name__}: {first}"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise argparse.ArgumentTypeError(f"'{module_name}' has no function '{function_name}'")
    return function
