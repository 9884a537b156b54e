"""Pipeline strings: parse ``canonicalize,calibrate{method=percentile,percentile=99.99},lower-qdq``
into configured passes, and print passes back into the same text.

The grammar is xDSL's, with commas between options::

    pipeline := pass ("," pass)*
    pass     := NAME ("{" option ("," option)* "}")?
    option   := KEY "=" VALUE
    VALUE    := "[" item ("," item)* "]" | text without , { } [ ]

Values are converted by the type of the ``Options`` field (int, float, bool, str, Literal, tuples,
optionals), so a typo or a wrong type fails at parse time with the option's name and allowed values,
before anything runs. A pass that forwards options to a component chosen by another option (the
``search`` pass and its strategies) declares an ``extra: tuple[tuple[str, str], ...]`` field: unknown
keys land there as text, and the pass validates them against the component it picked. Printing writes only options that differ from their defaults, in field order;
``parse(format(p))`` rebuilds ``p`` exactly.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from mpqc.passes.infra import registry
from mpqc.passes.infra.base import Pass, PassError
from mpqc.passes.infra.context import CompileContext

__all__ = ["PipelineSpec", "format_pass", "format_pipeline", "parse_pipeline", "build_pipeline"]

#: A parsed pipeline: (pass class, options) per step, not yet bound to a context.
PipelineSpec = list[tuple[type[Pass], Any]]

#: Name of the Options field that collects options the pass forwards (see module docstring).
EXTRA = "extra"

_TOKEN = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*")


def parse_pipeline(text: str) -> PipelineSpec:
    """Parse a pipeline string; raises PassError with the position of the first problem."""
    parser = _Parser(text)
    steps = parser.pipeline()
    return steps


def build_pipeline(text_or_spec: str | PipelineSpec, context: CompileContext) -> list[Pass]:
    """Parse (if needed) and instantiate every pass with the shared ``context``."""
    spec = parse_pipeline(text_or_spec) if isinstance(text_or_spec, str) else text_or_spec
    return [cls(options, context) for cls, options in spec]


def format_pass(p: Pass | tuple[type[Pass], Any]) -> str:
    cls, options = (type(p), p.options) if isinstance(p, Pass) else p
    items = []
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.default is not dataclasses.MISSING and value == field.default:
            continue
        if field.name == EXTRA:
            items += [f"{k}={v}" for k, v in value]
        else:
            items.append(f"{field.name}={_format_value(value)}")
    return cls.name + ("{" + ",".join(items) + "}" if items else "")


def format_pipeline(passes: list[Pass] | PipelineSpec) -> str:
    return ",".join(format_pass(p) for p in passes)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value) if not isinstance(value, float) else repr(value)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> PassError:
        return PassError(f"bad pipeline at column {self.pos + 1}: {message}  (in '{self.text}')")

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

    def pipeline(self) -> PipelineSpec:
        if not self.text.strip():
            raise self.fail("empty pipeline")
        steps = [self.step()]
        while self.peek() == ",":
            self.pos += 1
            steps.append(self.step())
        if self.peek():
            raise self.fail(f"unexpected {self.peek()!r}")
        return steps

    def step(self) -> tuple[type[Pass], Any]:
        name = self.token("a pass name")
        cls = registry.get(name)
        raw: dict[str, str | list[str]] = {}
        if self.peek() == "{":
            self.pos += 1
            if self.peek() != "}":
                while True:
                    key = self.token("an option name")
                    self.expect("=")
                    if key in raw:
                        raise self.fail(f"option '{key}' given twice")
                    raw[key] = self.value()
                    if self.peek() != ",":
                        break
                    self.pos += 1
            self.expect("}")
        return cls, _make_options(cls, raw)

    def value(self) -> str | list[str]:
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
            return items
        return self.scalar()

    def scalar(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",{}[]":
            self.pos += 1
        text = self.text[start : self.pos].strip()
        if not text:
            raise self.fail("expected a value")
        return text


def _make_options(cls: type[Pass], raw: dict[str, str | list[str]]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    hints = typing.get_type_hints(cls.Options)
    values: dict[str, Any] = {}
    extra = []
    for key, text in raw.items():
        if key not in fields or key == EXTRA:
            if EXTRA in fields and key != EXTRA:
                extra.append((key, _format_value(text) if isinstance(text, list) else text))
                continue
            known = ", ".join(f for f in fields if f != EXTRA) or "none"
            raise PassError(f"pass '{cls.name}' has no option '{key}' (options: {known})")
        try:
            values[key] = convert_option(text, hints[key])
        except ValueError as exc:
            raise PassError(f"pass '{cls.name}', option '{key}': {exc}") from None
    if extra:
        values[EXTRA] = tuple(extra)
    try:
        return cls.Options(**values)
    except (TypeError, ValueError) as exc:
        raise PassError(f"pass '{cls.name}': {exc}") from None


def convert_option(text: str | list[str], hint: Any) -> Any:
    """Text from a pipeline string -> a value of type ``hint`` (ValueError saying what was expected)."""
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
        items = text if isinstance(text, list) else [text]
        item_type = args[0] if args else str
        return tuple(convert_option(item, item_type) for item in items)
    if isinstance(text, list):
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
