"""Pipeline text: ``canonicalize,calibrate{method=percentile,percentile=99.99},lower-qdq``.

Two steps, as in xDSL (``PipelinePassSpec``, then ``ModulePass.from_pass_spec``):

1. ``parse_pipeline`` turns text into ``PassSpec`` values (a pass name and its options as written)
   without consulting the registry, so pipeline text can be read, checked for syntax, split and
   printed by code that knows no pass. Option keys are normalized to snake_case: ``block-size=32``
   and ``block_size=32`` are the same option.
2. ``resolve_pipeline`` looks each name up in the registry and converts each value by the type of
   its ``Options`` field (int, float, bool, str, Literal, tuples, optionals), so a typo or a wrong
   type fails with the option's name and allowed values before anything runs.

The grammar is xDSL's, with commas between options::

    pipeline := pass ("," pass)*
    pass     := NAME ("{" option ("," option)* "}")?
    option   := KEY "=" VALUE
    VALUE    := "[" item ("," item)* "]" | text without , { } [ ]

A pass that forwards options to a component another option chooses (``search`` and its strategy)
names the ``Options`` field holding the component's options in ``forwards``: keys the pass does not
know are converted by the component's ``Options`` instead, and printed after the pass's own.

Printing writes only options that differ from their defaults, in field order, with snake_case
keys: the canonical form. ``resolve_pipeline(format_pipeline(steps)) == steps``.

A step may also name a *named pipeline* (``default{uniform=w4a8}``, ``passes/infra/named.py``): it
resolves like a pass, and ``build_pipeline`` replaces it with the steps it expands to in the
compilation's context, so ``mpqc-opt`` runs the very pipeline ``mpqc`` runs.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from mpqc.passes.infra import registry
from mpqc.passes.infra.base import Pass, PassInputError
from mpqc.passes.infra.context import CompileContext
from mpqc.passes.infra.named import NamedPipeline

__all__ = [
    "PassSpec",
    "Step",
    "build_pipeline",
    "convert_option",
    "expand_pipeline",
    "format_pass",
    "format_pipeline",
    "parse_pipeline",
    "resolve_pipeline",
    "settable",
    "text_options",
]

#: An option's value as written: one text, or the items of a ``[a,b]`` list.
OptionText = str | tuple[str, ...]
#: A resolved step: the pass (or named pipeline) class and its options, not yet bound to a context.
Step = tuple[type[Pass] | type[NamedPipeline], Any]

_TOKEN = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*")


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """One step of pipeline text, unresolved: a pass name and its options as written."""

    name: str
    #: (snake_case key, value text) in the order written.
    options: tuple[tuple[str, OptionText], ...] = ()

    def __str__(self) -> str:
        items = [f"{key}={_format_text(value)}" for key, value in self.options]
        return self.name + ("{" + ",".join(items) + "}" if items else "")


def parse_pipeline(text: str) -> list[PassSpec]:
    """Pipeline text -> specs; a PassInputError with the column of the first syntax problem."""
    return _Parser(text).pipeline()


def resolve_pipeline(pipeline: str | Sequence[PassSpec]) -> list[Step]:
    """Look every pass up in the registry and convert its options (parsing text first)."""
    specs = parse_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    return [_resolve(spec) for spec in specs]


def build_pipeline(
    pipeline: str | Sequence[PassSpec] | Sequence[Step], context: CompileContext
) -> list[Pass]:
    """Resolve (if needed) and instantiate every pass with the shared ``context``, named
    pipelines expanded."""
    passes: list[Pass] = []
    for cls, options in _steps(pipeline):
        if issubclass(cls, NamedPipeline):
            passes += build_pipeline(cls.expand(options, context), context)
        else:
            passes.append(cls(options, context))
    return passes


def expand_pipeline(
    pipeline: str | Sequence[PassSpec] | Sequence[Step], context: CompileContext
) -> str:
    """The pipeline's text with every named pipeline replaced by the steps it stands for in
    ``context`` (text without one comes back as written)."""
    steps = _steps(pipeline)
    if isinstance(pipeline, str) and not any(issubclass(c, NamedPipeline) for c, _ in steps):
        return pipeline
    return ",".join(
        expand_pipeline(cls.expand(options, context), context)
        if issubclass(cls, NamedPipeline)
        else format_pass((cls, options))
        for cls, options in steps
    )


def _steps(pipeline: str | Sequence[PassSpec] | Sequence[Step]) -> list[Step]:
    items = parse_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    return [_resolve(item) if isinstance(item, PassSpec) else item for item in items]


def format_pass(p: Pass | Step | PassSpec) -> str:
    """The canonical text of a pass, a resolved step or a spec."""
    if isinstance(p, PassSpec):
        return str(p)
    cls, options = (type(p), p.options) if isinstance(p, Pass) else p
    items = _changed(options)
    if cls.forwards is not None:
        items += _changed(getattr(options, cls.forwards[1]))
    return cls.name + ("{" + ",".join(items) + "}" if items else "")


def format_pipeline(passes: Sequence[Pass | Step | PassSpec]) -> str:
    return ",".join(format_pass(p) for p in passes)


def _changed(options: Any) -> list[str]:
    """``key=value`` for every option text can give that differs from its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(options)}
    items = []
    for name in text_options(type(options)):
        value = getattr(options, name)
        if value != defaults[name]:
            items.append(f"{name}={_format_value(value)}")
    return items


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value) if not isinstance(value, float) else repr(value)


def _format_text(value: OptionText) -> str:
    return "[" + ",".join(value) + "]" if isinstance(value, tuple) else value


# --- parsing (no registry) -------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> PassInputError:
        return PassInputError(
            f"bad pipeline at column {self.pos + 1}: {message}  (in '{self.text}')"
        )

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "end of text"
            raise self.fail(f"expected '{char}', found {found}")
        self.pos += 1

    def token(self, what: str) -> str:
        match = _TOKEN.match(self.text, self.pos)
        if not match:
            raise self.fail(f"expected {what}")
        self.pos = match.end()
        return match.group(1)

    def pipeline(self) -> list[PassSpec]:
        if not self.text.strip():
            raise self.fail("empty pipeline")
        specs = [self.step()]
        while self.peek() == ",":
            self.pos += 1
            specs.append(self.step())
        if self.peek():
            raise self.fail(f"unexpected {self.peek()!r}")
        return specs

    def step(self) -> PassSpec:
        name = self.token("a pass name")
        options: dict[str, OptionText] = {}
        if self.peek() == "{":
            self.pos += 1
            if self.peek() != "}":
                while True:
                    key = self.token("an option name").replace("-", "_")
                    self.expect("=")
                    if key in options:
                        raise self.fail(f"option '{key}' given twice")
                    options[key] = self.value()
                    if self.peek() != ",":
                        break
                    self.pos += 1
            self.expect("}")
        return PassSpec(name, tuple(options.items()))

    def value(self) -> OptionText:
        if self.peek() == "[":
            self.pos += 1
            items: list[str] = []
            while self.peek() != "]":
                items.append(self.scalar())
                if self.peek() == ",":
                    self.pos += 1
                elif self.peek() != "]":
                    raise self.fail("expected ',' or ']' in a list")
            self.pos += 1
            return tuple(items)
        return self.scalar()

    def scalar(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",{}[]":
            self.pos += 1
        text = self.text[start : self.pos].strip()
        if not text:
            raise self.fail("expected a value")
        return text


# --- resolving (the registry and the Options types) ------------------------------------------


def _resolve(spec: PassSpec) -> Step:
    cls = registry.get(spec.name)
    field = cls.forwards[1] if cls.forwards is not None else None
    own = [f.name for f in dataclasses.fields(cls.Options) if f.name != field]
    given = dict(spec.options)
    options = _make(cls.name, cls.Options, {k: v for k, v in given.items() if k in own})
    forwarded = {k: v for k, v in given.items() if k not in own}
    if not forwarded:
        return cls, options
    if field is None:
        raise PassInputError(
            f"pass '{cls.name}' has no option '{next(iter(forwarded))}' "
            f"(options: {', '.join(own) or 'none'})"
        )
    component = type(getattr(options, field))
    known = text_options(component)
    for key in forwarded:
        if key not in known:
            name = next(n for n, c in cls.components().items() if c is component)
            raise PassInputError(
                f"pass '{cls.name}' has no option '{key}' "
                f"(options: {', '.join(own)}; with {name}: {', '.join(known) or 'none'})"
            )
    values = _make(cls.name, component, forwarded)
    return cls, dataclasses.replace(options, **{field: values})


def _make(pass_name: str, options_class: type, given: dict[str, OptionText]) -> Any:
    hints = _hints(options_class)
    values = {}
    for key, text in given.items():
        try:
            values[key] = convert_option(text, hints[key])
        except ValueError as exc:
            raise PassInputError(f"pass '{pass_name}', option '{key}': {exc}") from None
    try:
        return options_class(**values)
    except (TypeError, ValueError) as exc:
        raise PassInputError(f"pass '{pass_name}': {exc}") from None


def _hints(options_class: type) -> dict[str, Any]:
    return typing.get_type_hints(options_class)


def text_options(options_class: type) -> list[str]:
    """The fields of ``options_class`` that pipeline text can set, in field order."""
    hints = _hints(options_class)
    return [f.name for f in dataclasses.fields(options_class) if settable(hints[f.name])]


def settable(hint: Any) -> bool:
    """Whether pipeline text can give an option of type ``hint`` (a callable cannot)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return all(arg is type(None) or settable(arg) for arg in args)
    if origin is tuple:
        return not args or settable(args[0])
    return origin is typing.Literal or hint in (bool, int, float, str)


def convert_option(text: OptionText, hint: Any) -> Any:
    """Pipeline text -> a value of type ``hint``; a ValueError saying what was expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text == "none" and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_option(text, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        items = text if isinstance(text, tuple) else (text,)
        item_type = args[0] if args else str
        return tuple(convert_option(item, item_type) for item in items)
    if isinstance(text, tuple):
        raise ValueError(f"expected one value, got a list [{','.join(text)}]")
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == text:
                return choice
        raise ValueError(f"'{text}' is not one of {', '.join(map(str, args))}")
    if hint is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"'{text}' is not a boolean (true or false)")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise ValueError(
                f"'{text}' is not {'an integer' if hint is int else 'a number'}"
            ) from None
    if hint is str:
        return text
    raise ValueError(f"options of type {hint} cannot be given in a pipeline string")
