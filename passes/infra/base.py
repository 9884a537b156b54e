"""The mpqc pass contract, on top of onnx_ir's.

An mpqc pass is an ``onnx_ir.passes.InPlacePass``, so it runs inside any onnx_ir or onnxscript pass
manager, plus what a quantization compiler needs to compose passes safely:

- ``name``: the kebab-case key used in pipeline strings and the registry;
- ``Options``: a frozen dataclass whose fields are the pass's options, each documented through
  ``option(...)`` so that ``mpqc-opt --help-passes`` can list them;
- what it reads and writes, as annotation keys (``mpqc.ir.annotations``) or key families
  (``SENSITIVITY``, any ``mpqc.sens.<metric>``), never as text:

  - ``reads``: required; checked before the pass runs (a missing analysis is a pipeline error,
    not a silent zero);
  - ``may_read``: used when present (calibrated ranges the lowering can do without);
  - ``writes``: ensured; after every successful run each key is present (the report: this pass's
    own section), checked after ``call``. A run that finds nothing to do says so with
    ``nothing_to_do(note)``, which notes why and waives the check for that run only, so a
    conditional output is explicit at the line that decides it;
  - ``preserves``: still valid after the pass (``ALL`` for a pass that only analyses); after a
    pass that modified the model, annotations it neither wrote nor preserved are dropped, because
    they describe a model that no longer exists.

  A violated ``writes`` is a bug in the pass, raised as onnx_ir's ``PostconditionError`` naming
  the pass and the key; the check costs one walk over the annotations and is always on. With
  ``MPQC_CHECK_CONTRACTS=1`` in the environment (the test suite sets it) every annotation a pass
  reads must also be declared in ``reads``, ``may_read`` or ``writes``; an undeclared read is
  onnx_ir's ``InvariantError``. It is a check on mpqc's own code, so a user's compilation never
  stops for it.
- the report: ``mpqc.report`` holds one section per pass, ``{pass name: section}``; a pass sets
  its own with ``report(model, section)`` and changing another pass's section is a contract error.

State shared across passes (calibration data, hardware spec, seed, executor, cache) comes from the
``CompileContext`` given at construction, never from globals, so two compilations can run side by
side in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterable
from typing import Any, ClassVar

import onnx_ir as ir

from mpqc.core.errors import MpqcError
from mpqc.ir import annotations
from mpqc.ir.annotations import AnnotationKey, KeyFamily
from mpqc.passes.infra.context import CompileContext

__all__ = ["Keys", "NoOptions", "Pass", "PassInputError", "option"]

#: Set to "1" in the environment to check that passes read only what they declare (tests do).
CHECK_CONTRACTS = "MPQC_CHECK_CONTRACTS"

#: What a contract names: annotation keys and key families.
Keys = frozenset[AnnotationKey[Any] | KeyFamily[Any]]


class PassInputError(MpqcError):
    """A pass cannot run on this model or with these inputs; the message says what to do.

    Not called ``PassError``: onnx_ir has a ``PassError`` of its own (a pass broke its contract,
    a bug), and mpqc's means bad input, shown to the user as one line.
    """


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
    reads: ClassVar[Keys] = frozenset()
    may_read: ClassVar[Keys] = frozenset()
    writes: ClassVar[Keys] = frozenset()
    preserves: ClassVar[Keys] = frozenset()
    #: For a pass that forwards options to a component another option chooses (``search`` and its
    #: strategy): (the option naming the component, the ``Options`` field holding the component's
    #: own options). Pipeline text gives those as the pass's own
    #: (``search{strategy=nsga2,generations=100}``). None for most passes.
    forwards: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def components(cls) -> dict[str, type]:
        """Each component's name and ``Options`` class, for a pass that ``forwards``."""
        return {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for role in ("reads", "may_read", "writes", "preserves"):
            wrong = [k for k in getattr(cls, role) if not isinstance(k, (AnnotationKey, KeyFamily))]
            if wrong:
                raise TypeError(
                    f"{cls.__qualname__}.{role} must hold annotation keys or key families "
                    f"(mpqc.ir.annotations), not {wrong[0]!r}"
                )

    def __init__(
        self, options: Any = None, context: CompileContext | None = None, **overrides: Any
    ) -> None:
        if options is None:
            options = self.Options(**overrides)
        elif overrides:
            options = dataclasses.replace(options, **overrides)
        if not isinstance(options, self.Options):
            raise TypeError(
                f"{self.name}: options must be {self.Options.__name__}, "
                f"got {type(options).__name__}"
            )
        self.options = options
        self.context = context if context is not None else CompileContext()

    def __repr__(self) -> str:
        from mpqc.passes.infra.pipeline import format_pass

        return f"<pass {format_pass(self)}>"

    def requires(self, model: ir.Model) -> None:
        present = annotations.present_keys(model)
        missing = [key.name for key in _sorted(self.reads) if not _any_present(key, present)]
        if missing:
            raise ir.passes.PreconditionError(
                f"pass '{self.name}' needs {', '.join(missing)}: run the pass that writes it first"
            )

    def ensures(self, model: ir.Model) -> None:
        if self._nothing_to_do:
            return
        present = annotations.present_keys(model)
        missing = [
            key.name
            for key in _sorted(self.writes)
            if not (
                annotations.REPORT.section(model, self.name) is not None
                if key is annotations.REPORT
                else _any_present(key, present)
            )
        ]
        if missing:
            what = [
                f"its {annotations.REPORT.name} section"
                if name == annotations.REPORT.name
                else name
                for name in missing
            ]
            raise ir.passes.PostconditionError(
                f"pass '{self.name}' declares that it writes {', '.join(what)} but did not write "
                "it; write it, or call nothing_to_do() on a run that has nothing to write"
            )

    def _check_read(self, key: AnnotationKey[Any]) -> None:
        if not _matches(self.reads | self.may_read | self.writes, key.name):
            raise ir.passes.InvariantError(
                f"pass '{self.name}' read {key.name} but does not declare it in reads or may_read"
            )

    def nothing_to_do(self, note: str) -> None:
        """This run writes none of ``writes`` (no data, no layer to act on): note why and skip the
        check, for this run only."""
        self.context.note(note)
        self._nothing_to_do = True

    def report(self, model: ir.Model, section: dict[str, Any]) -> None:
        """Set this pass's section of ``mpqc.report`` (declare ``REPORT`` in ``writes``)."""
        if annotations.REPORT not in self.writes:
            raise ir.passes.InvariantError(
                f"pass '{self.name}' reports without declaring {annotations.REPORT.name} in writes"
            )
        annotations.REPORT.set_section(model, self.name, section)

    def task_metric(self, model: Any, what: str) -> float:
        """The user's task metric (``context.eval_fn``) on ``model``, ``what`` naming it for errors.

        The metric is the user's code: any exception it raises, or a result that is not a finite
        number, becomes one PassInputError line naming this pass and the model it was scoring.
        """
        assert self.context.eval_fn is not None
        try:
            value = float(self.context.eval_fn(model))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - anything the user's function raises
            # sys.exit() in a metric must not end mpqc with the metric's exit code, nothing written
            if isinstance(exc, SystemExit):
                detail = f"it called sys.exit({exc.code!r})"
            else:
                first = str(exc).splitlines()[0] if str(exc) else ""
                detail = f"{type(exc).__name__}: {first}"
            raise PassInputError(
                f"{self.name}: the evaluation function failed on {what}: {detail}"
            ) from None
        if not math.isfinite(value):
            raise PassInputError(
                f"{self.name}: the evaluation function returned {value} on {what}; "
                "it must return a finite number"
            )
        return value

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> ir.passes.PassResult:
        model = getattr(model_or_result, "model", model_or_result)
        others_before = _other_sections(model, self.name)
        self._nothing_to_do = False
        checking_reads = os.environ.get(CHECK_CONTRACTS) == "1"
        with (
            annotations.observe_reads(self._check_read)
            if checking_reads
            else contextlib.nullcontext()
        ):
            result = super().__call__(model_or_result)
        if _other_sections(result.model, self.name) != others_before:
            raise ir.passes.PostconditionError(
                f"pass '{self.name}' changed another pass's section of {annotations.REPORT.name}; "
                "a pass sets only its own, with report()"
            )
        if result.modified:
            keep = self.writes | self.preserves
            stale = {k for k in annotations.present_keys(result.model) if not _matches(keep, k)}
            annotations.drop(result.model, stale)
        return result


def _sorted(keys: Iterable[AnnotationKey[Any] | KeyFamily[Any]]) -> list:
    return sorted(keys, key=lambda key: key.name)


def _matches(keys: Keys, name: str) -> bool:
    return any(key.matches(name) for key in keys)


def _any_present(key: AnnotationKey[Any] | KeyFamily[Any], present: set[str]) -> bool:
    return any(key.matches(name) for name in present)


def _other_sections(model: ir.Model, owner: str) -> dict[str, Any]:
    """The report sections that ``owner`` does not own, parsed here rather than through
    ``REPORT.get``: the infrastructure's look is not a read by the pass."""
    raw = model.metadata_props.get(annotations.REPORT.name)
    if raw is None:
        return {}
    return {name: section for name, section in json.loads(raw).items() if name != owner}
