"""Pass instruments (TVM-style): code that runs around every pass without the passes knowing.

Timing, progress and IR printing are instruments rather than features of passes, so every pass
gets them for free and a toolchain can add its own (memory tracking, checkpoints) the same way.
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import IO, Protocol

import onnx_ir as ir

from mpqc.ir.printer import dump

__all__ = ["Instrument", "IRPrinter", "Snapshot", "Timing", "Progress", "dump_header"]


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
    """One line per pass on a stream (stderr by default): what runs now, how long the last took."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self._index = 0
        self._start = 0.0

    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        self._index += 1
        self._start = time.perf_counter()
        self.stream.write(f"[{self._index}/{self.total}] {_pass_name(pass_)} ...")
        self.stream.flush()

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None:
        self.stream.write(f" {time.perf_counter() - self._start:.2f} s\n")
        self.stream.flush()


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
