"""What every mpqc command shares: error handling, IR dump flags, exit codes.

Bad input must give one clear line and exit code 1 (2 for infeasible constraints), with the
traceback only under ``-v``; unexpected failures say they are internal so the user knows to report
them. Keeping this in one place makes ``mpqc``, ``mpqc-opt`` and ``mpqc-hw`` behave alike.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pathlib
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

from mpqc.core.errors import MpqcError
from mpqc.passes.infra.instruments import Instrument, IRPrinter

__all__ = [
    "ArgumentParser",
    "EXIT_INFEASIBLE",
    "EXIT_OK",
    "EXIT_USER",
    "add_ir_dump_arguments",
    "ir_printer",
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


def run_command(prog: str, body: Callable[[], int], verbose: bool) -> int:
    """Run ``body``; turn exceptions into one line on stderr and an exit code.

    Python warnings from the libraries underneath (numpy, scipy, onnxruntime's Python layer) are
    shown only under ``-v``: what the user needs to know reaches them as notes in the summary, and
    ``-q`` promises silence on success.
    """
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_USER
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and an exit code
        if isinstance(exc, SystemExit):
            raise
        if verbose:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, infeasible_errors()):
            print(f"{prog}: {first}", file=sys.stderr)
            return EXIT_INFEASIBLE
        if isinstance(exc, user_errors()):
            print(f"{prog}: {first}", file=sys.stderr)
        else:
            hint = "" if verbose else " (run with -v for the traceback)"
            print(f"{prog}: internal error: {type(exc).__name__}: {first}{hint}", file=sys.stderr)
        return EXIT_USER


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


def add_eval_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval",
        metavar="MODULE:FUNCTION",
        type=task_metric_function,
        help="task metric: a function taking an onnx.ModelProto and returning a number, higher is better "
        "(MODULE is an importable module or a .py file), used by verify and sensitivity-task",
    )


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
        raise argparse.ArgumentTypeError(
            f"cannot import '{module_name}': {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise argparse.ArgumentTypeError(f"'{module_name}' has no function '{function_name}'")
    return function
