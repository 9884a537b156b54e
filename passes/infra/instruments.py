"""Pass instruments (TVM-style): code that runs around every pass without the passes knowing.

Timing, progress and IR printing are instruments rather than features of passes, so every pass
gets them for free and a toolchain can add its own (memory tracking, checkpoints) the same way.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import threading
import time
from typing import IO, Any, Protocol

import onnx
import onnx_ir as ir

from mpqc.core.errors import MpqcError
from mpqc.ir import io
from mpqc.ir.printer import dump

__all__ = [
    "VERIFY_EACH",
    "Instrument",
    "IRPrinter",
    "Progress",
    "Snapshot",
    "Timing",
    "VerifyEach",
    "VerifyEachError",
    "dump_header",
]

#: Set to "1" in the environment to verify the model after every pass (the test suite does).
VERIFY_EACH = "MPQC_VERIFY_EACH"


class Instrument(Protocol):
    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None: ...

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None: ...


def _pass_name(pass_: ir.passes.PassBase) -> str:
    return getattr(pass_, "name", type(pass_).__name__)


def dump_header(pass_name: str) -> str:
    """MLIR's dump header, so tools that split MLIR dumps split ours too."""
    return f"// -----// IR Dump After {pass_name} //----- //"


class Timing:
    """Wall time per pass, in order of execution."""

    def __init__(self) -> None:
        self.seconds: list[tuple[str, float]] = []
        self._start = 0.0

    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        self._start = time.perf_counter()

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None:
        self.seconds.append((_pass_name(pass_), time.perf_counter() - self._start))

    def table(self) -> str:
        total = sum(s for _, s in self.seconds) or 1.0
        lines = [f"{name:<28} {s:9.3f} s {100 * s / total:5.1f} %" for name, s in self.seconds]
        return "\n".join(lines)


class Progress:
    """What runs, for a person waiting: passes and the steps they count (``context.steps``).

    On a terminal, a pass still running after ``after`` seconds gets a live ``rich`` bar (its
    steps, or a spinner); elsewhere (a log, CI) every pass that took at least ``after`` seconds
    gets one plain line when it ends, ``[4/8] search 3.20 s (120 evaluations)``. Quick passes show
    nothing either way, so a fast compilation prints only its summary. It is also the context's
    ``StepReporter``: give it as ``CompileContext.progress``.
    """

    def __init__(
        self,
        total: int,
        stream: IO[str] | None = None,
        after: float = 2.0,
        live: bool | None = None,
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.after = after
        self.live = self.stream.isatty() if live is None else live
        self._index = 0
        self._name = ""
        self._start = 0.0
        self._what = ""
        self._steps = 0
        self._step_total: int | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._bar: Any = None
        self._task: Any = None

    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        self._index += 1
        self._name = _pass_name(pass_)
        self._start = time.perf_counter()
        self._what, self._steps, self._step_total = "", 0, None
        if self.live:
            self._timer = threading.Timer(self.after, self._show)
            self._timer.daemon = True
            self._timer.start()

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None:
        seconds = time.perf_counter() - self._start
        shown = self._hide()
        if seconds >= self.after and not shown:
            steps = f" ({self._steps} {self._what})" if self._what else ""
            self.stream.write(f"[{self._index}/{self.total}] {self._name} {seconds:.2f} s{steps}\n")
            self.stream.flush()

    # --- StepReporter ------------------------------------------------------------------------

    def start_steps(self, what: str, total: int | None) -> None:
        with self._lock:
            self._what, self._steps, self._step_total = what, 0, total
            if self._bar is not None:
                self._bar.update(self._task, completed=0, total=total, what=what)

    def advance(self, count: int) -> None:
        with self._lock:
            self._steps += count
            if self._bar is not None:
                self._bar.update(self._task, completed=self._steps)

    # --- the live bar ------------------------------------------------------------------------

    def _show(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        with self._lock:
            if self._timer is None:  # the pass ended while this timer thread was starting
                return
            self._bar = Bar(
                SpinnerColumn(),
                TextColumn(f"[{self._index}/{self.total}] {self._name}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[what]}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                get_time=time.perf_counter,
            )
            self._task = self._bar.add_task(
                self._name, total=self._step_total, completed=self._steps, what=self._what
            )
            # the elapsed time is the pass's, not the bar's (which appears ``after`` seconds in)
            next(t for t in self._bar.tasks if t.id == self._task).start_time = self._start
            self._bar.start()

    def _hide(self) -> bool:
        """Stop the timer and the bar; whether the bar was showing (it leaves its last line)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            bar, self._bar = self._bar, None
        if bar is None:
            return False
        bar.stop()
        return True


class IRPrinter:
    """``--print-ir-after-all``, ``--print-ir-after=PASS``, ``--print-ir-after-change``,
    ``--ir-dump-dir``.

    With a dump directory, each dump goes to ``NNN_<pass>.txt`` (NNN = position in the pipeline)
    instead of the stream. ``after_change`` prints only when the pass changed the printed IR, which
    needs the text before the pass, so it costs one extra print per pass.
    """

    def __init__(
        self,
        *,
        after_all: bool = False,
        after: frozenset[str] = frozenset(),
        after_change: bool = False,
        dump_dir: str | pathlib.Path | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.after_all = after_all or (dump_dir is not None and not after and not after_change)
        self.after = after
        self.after_change = after_change
        self.dump_dir = pathlib.Path(dump_dir) if dump_dir is not None else None
        self.stream = stream if stream is not None else sys.stderr
        self._index = 0
        self._before: str | None = None
        if self.dump_dir is not None:
            if self.dump_dir.exists() and not self.dump_dir.is_dir():
                raise NotADirectoryError(
                    f"IR dump directory {self.dump_dir} is a file: give a directory name"
                )
            self.dump_dir.mkdir(parents=True, exist_ok=True)

    @property
    def active(self) -> bool:
        return self.after_all or bool(self.after) or self.after_change

    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        self._index += 1
        self._before = dump(model) if self.after_change else None

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None:
        name = _pass_name(pass_)
        wanted = self.after_all or name in self.after
        text = None
        if self.after_change:
            text = dump(result.model)
            wanted = wanted or text != self._before
        if not wanted:
            return
        text = text if text is not None else dump(result.model)
        block = f"{dump_header(name)}\n{text}"
        if self.dump_dir is not None:
            (self.dump_dir / f"{self._index:03d}_{name}.txt").write_text(block)
        else:
            self.stream.write(block + "\n")


class Snapshot:
    """Keeps a copy of the model as it was right after pass ``after`` (e.g. the analysed model
    after ``search``, from which other points of the front can be lowered), or right before pass
    ``before`` (the model ``lower-qdq`` is given, whose layers a plan file names)."""

    def __init__(self, after: str | None = None, before: str | None = None) -> None:
        self.after = after
        self.before = before
        self.model: ir.Model | None = None

    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        if _pass_name(pass_) == self.before:
            self.model = model.clone()

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None:
        if _pass_name(pass_) == self.after:
            self.model = result.model.clone()


class VerifyEachError(MpqcError):
    """A pass left a model that onnx's checker or onnxruntime refuses; names the pass."""


class VerifyEach:
    """``--verify-each`` (MLIR's ``-verify-each``): after every pass, the model as it would be
    saved (annotations included) must pass ``onnx.checker`` with ``full_check`` and load in an
    onnxruntime CPU session, so the pass that breaks a graph is named instead of the symptom
    surfacing passes later, or in the user's runtime.

    Models whose tensors overflow a protobuf are written to a temporary folder with external data
    and checked by path, as ``mpqc.ir.io.write`` would save them.
    """

    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        pass

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None:
        try:
            _verify(result.model)
        except Exception as error:  # the checker's and onnxruntime's errors share no base
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise VerifyEachError(
                f"verify-each: after pass '{_pass_name(pass_)}': {lines[0]}"
            ) from error


def _verify(model: ir.Model) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    providers = ["CPUExecutionProvider"]
    if io.fits_in_protobuf(model):
        proto = ir.serde.serialize_model(model)
        io.check(proto)
        folder = io.external_folder(model)  # a model that stays external is referred to there
        if folder is not None:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", folder
            )
        ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
        return
    with tempfile.TemporaryDirectory(prefix="mpqc-verify-") as folder:
        path = os.path.join(folder, "model.onnx")
        io.write(model, pathlib.Path(path), "model.onnx.data")
        onnx.checker.check_model(path, full_check=True)
        ort.InferenceSession(path, options, providers=providers)
