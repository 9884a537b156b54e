"""The mpqc pass contract, on top of onnx_ir's.

An mpqc pass is an ``onnx_ir.passes.InPlacePass``, so it runs inside any onnx_ir or onnxscript pass
manager, plus what a quantization compiler needs to compose passes safely:

- ``name``: the kebab-case key used in pipeline strings and the registry;
- ``Options``: a frozen dataclass whose fields are the pass's options, each documented through
  ``option(...)`` so that ``mpqc-opt --help-passes`` can list them;
- ``reads`` / ``writes`` / ``preserves``: annotation keys (``fnmatch`` patterns such as
  ``mpqc.sens.*`` allowed). ``reads`` is checked before the pass runs (a missing analysis is a
  pipeline error, not a silent zero); after a pass that modified the model, annotations it neither
  wrote nor preserved are dropped, because they describe a model that no longer exists.

State shared across passes (calibration data, hardware spec, seed, executor, cache) comes from the
``CompileContext`` given at construction, never from globals, so two compilations can run side by
side in one process.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, ClassVar

import onnx_ir as ir

from mpqc.core.errors import MpqcError
from mpqc.ir import annotations
from mpqc.passes.infra.context import CompileContext

__all__ = ["NoOptions", "Pass", "PassError", "option"]


class PassError(MpqcError):
    """A pass cannot run on this model or with these inputs; the message says what to do."""


def option(default: Any, doc: str, **kwargs: Any) -> Any:
    """A documented ``Options`` field: ``x: int = option(3, "what x means")``."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable: use a tuple")
    return dataclasses.field(default=default, metadata={"doc": doc}, **kwargs)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A pass without options."""


class Pass(ir.passes.InPlacePass):
    """Base class of every mpqc pass (see the module docstring for the contract)."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    reads: ClassVar[frozenset[str]] = frozenset()
    writes: ClassVar[frozenset[str]] = frozenset()
    #: Annotation patterns still valid after this pass; ``"*"`` for a pass that only analyses.
    preserves: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, options: Any = None, context: CompileContext | None = None, **overrides: Any
    ) -> None:
        if options is None:
            options = self.Options(**overrides)
        elif overrides:
            options = dataclasses.replace(options, **overrides)
        if not isinstance(options, self.Options):
            raise TypeError(
                f"{self.name}: options must be {self.Options.__name__}, got {type(options).__name__}"
            )
        self.options = options
        self.context = context if context is not None else CompileContext()

    def __repr__(self) -> str:
        from mpqc.passes.infra.pipeline import format_pass

        return f"<pass {format_pass(self)}>"

    def requires(self, model: ir.Model) -> None:
        missing = [
            pattern
            for pattern in sorted(self.reads)
            if not _any_match(pattern, annotations.present_keys(model))
        ]
        if missing:
            raise ir.passes.PreconditionError(
                f"pass '{self.name}' needs {', '.join(missing)}: run the pass that writes it first"
            )

    def task_metric(self, model: Any, what: str) -> float:
        """The user's task metric (``context.eval_fn``) on ``model``, ``what`` naming it for errors.

        The metric is the user's code: any exception it raises, or a result that is not a finite
        number, becomes one PassError line naming this pass and the model it was scoring.
        """
        assert self.context.eval_fn is not None
        try:
            value = float(self.context.eval_fn(model))
        except Exception as exc:  # noqa: BLE001 - anything the user's function raises
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise PassError(
                f"{self.name}: the evaluation function failed on {what}: {type(exc).__name__}: {detail}"
            ) from None
        if not math.isfinite(value):
            raise PassError(
                f"{self.name}: the evaluation function returned {value} on {what}; it must return a finite number"
            )
        return value

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> ir.passes.PassResult:
        result = super().__call__(model_or_result)
        if result.modified:
            keep = self.writes | self.preserves
            stale = {
                k
                for k in annotations.present_keys(result.model)
                if not _any_match_patterns(k, keep)
            }
            annotations.drop(result.model, stale)
        return result


def _any_match(pattern: str, names: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def _any_match_patterns(name: str, patterns: frozenset[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
