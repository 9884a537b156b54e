"""The typed annotation keys that passes read and write.

Every key is declared here once, with the scope it lives on (a node, a value, or the model), the
type of its value and whether it persists. Persistent annotations are stored as canonical JSON in
the object's ``metadata_props``, which ONNX serializes: an annotated model saved between passes
reloads with its annotations, and a user can stop after analysis, edit ``mpqc.bits`` in the file,
and lower. Keeping ``metadata_props`` as the only store (rather than mirroring it in ``meta``)
means there is no second copy to fall out of sync. Transient annotations (big arrays, caches) live
in ``meta``, which is never serialized.

Values are JSON-shaped (dicts with string keys, lists, numbers, strings). Encoding sorts keys and
rounds floats to a fixed number of significant digits, so the same analysis prints and saves the
same bytes. Decoding checks the value against the key's declared type, because a persisted value
may have been edited by hand: a wrong shape is one ``AnnotationError`` naming the key and the
object, not a ``KeyError`` deep inside a pass.

Families (``mpqc.sens.<metric>``) declare the keys they make; the report (``mpqc.report``) is one
model annotation made of sections, one per pass that reports, so that each pass owns its section.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, NotRequired, TypedDict, TypeVar

import onnx_ir as ir

from mpqc.core.bits import Bits
from mpqc.ir.io import ModelError

__all__ = [
    "ALL",
    "AnnotationError",
    "AnnotationKey",
    "BITS",
    "CALIB_RANGE",
    "COST",
    "KeyFamily",
    "MODEL_COST",
    "PARETO",
    "REPORT",
    "SENSITIVITY",
    "SENSITIVITY_DETAIL",
    "SectionedKey",
    "annotated",
    "canonical_json",
    "chosen_bits",
    "detail_key",
    "layer_bits",
    "sensitivity_key",
    "registered_keys",
]

T = TypeVar("T")
Scope = Literal["node", "value", "model"]
Annotated = ir.Node | ir.Value | ir.Model

#: Significant digits kept for floats in persisted annotations and in IR dumps.
FLOAT_DIGITS = 6

_REGISTRY: dict[str, AnnotationKey[Any]] = {}

#: Called with every key read (``get``, ``has``) while set; see ``observe_reads``.
_read_observer: contextvars.ContextVar[Callable[[AnnotationKey[Any]], None] | None] = (
    contextvars.ContextVar("mpqc_annotation_read_observer", default=None)
)


@contextlib.contextmanager
def observe_reads(observer: Callable[[AnnotationKey[Any]], None]) -> Iterator[None]:
    """Call ``observer(key)`` on every annotation read in this block (and this thread or task).

    The pass infrastructure uses it to check that a pass reads only the keys it declares; this
    module only reports reads, it knows nothing of passes. Blocks nest: the innermost observes.
    """
    token = _read_observer.set(observer)
    try:
        yield
    finally:
        _read_observer.reset(token)


def _observe(key: AnnotationKey[Any]) -> None:
    observer = _read_observer.get()
    if observer is not None:
        observer(key)


def _round_floats(obj: Any) -> Any:
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return str(obj)  # JSON has no inf/nan; keep them readable and loadable
        return float(f"{obj:.{FLOAT_DIGITS}g}")
    if isinstance(obj, dict):
        return {str(k): _round_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round_floats(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays
        return _round_floats(obj.tolist())
    return obj


def canonical_json(obj: Any) -> str:
    """Deterministic, compact JSON: sorted keys, floats at FLOAT_DIGITS significant digits."""
    return json.dumps(_round_floats(obj), sort_keys=True, separators=(",", ":"))


class AnnotationError(ModelError):
    """A persisted annotation does not have its key's type (a hand edit gone wrong, usually)."""


def _where(obj: Annotated) -> str:
    if isinstance(obj, ir.Model):
        return "the model"
    if isinstance(obj, ir.Node):
        # An unnamed node by its first output, as mpqc-opt --report-json names it.
        return f"node '{obj.name or obj.outputs[0].name}'"
    return f"value '{obj.name}'"


def _decode(value: Any, hint: Any, path: str) -> Any:
    """``value`` (parsed JSON) checked against the type ``hint``; a ValueError saying where not.

    Non-finite floats come back as floats (``canonical_json`` writes them as text). Integers are
    accepted where a float is declared, as JSON does not tell ``1`` from ``1.0``.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _decode(value, arg, path)
            except ValueError:
                continue
        raise ValueError(f"{path} is {value!r}, not {_type_text(hint)}")
    if typing.is_typeddict(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{path} is {value!r}, not an object")
        fields = typing.get_type_hints(hint)
        missing = sorted(hint.__required_keys__ - set(value))
        if missing:
            raise ValueError(f"{path} has no {', '.join(map(repr, missing))}")
        return {
            k: _decode(v, fields[k], f"{path}[{k!r}]") if k in fields else v
            for k, v in value.items()
        }
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path} is {value!r}, not an object")
        return {k: _decode(v, args[1], f"{path}[{k!r}]") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{path} is {value!r}, not a list")
        return [_decode(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, str) and value in ("inf", "-inf", "nan"):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise ValueError(f"{path} is {value!r}, not {_type_text(hint)}")


def _type_text(hint: Any) -> str:
    if typing.is_typeddict(hint):
        return (
            "{"
            + ", ".join(f"{k}: {_type_text(v)}" for k, v in typing.get_type_hints(hint).items())
            + "}"
        )
    if typing.get_args(hint):
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


@dataclasses.dataclass(frozen=True)
class AnnotationKey(Generic[T]):
    """A named, scoped slot for pass results on IR objects, holding values of ``value_type``."""

    name: str
    scope: Scope
    value_type: Any = Any
    persistent: bool = True
    doc: str = ""

    def __post_init__(self) -> None:
        existing = _REGISTRY.get(self.name)
        if existing is not None and existing != self:
            raise ValueError(
                f"annotation key {self.name!r} declared twice with different definitions"
            )
        _REGISTRY[self.name] = self

    def __str__(self) -> str:
        return self.name

    @property
    def type_text(self) -> str:
        """The value type as ``--help-passes`` prints it."""
        return _type_text(self.value_type)

    def matches(self, name: str) -> bool:
        return name == self.name

    def get(self, obj: Annotated, default: T | None = None) -> T | None:
        _observe(self)
        if not self.persistent:
            return obj.meta.get(self.name, default)
        raw = obj.metadata_props.get(self.name)
        if raw is None:
            return default
        try:
            return _decode(json.loads(raw), self.value_type, self.name)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise AnnotationError(f"{self.name} on {_where(obj)}: {exc}") from None

    def set(self, obj: Annotated, value: T) -> None:
        if self.persistent:
            obj.metadata_props[self.name] = canonical_json(value)
        else:
            obj.meta[self.name] = value

    def has(self, obj: Annotated) -> bool:
        _observe(self)
        return self.name in (obj.metadata_props if self.persistent else obj.meta)

    def remove(self, obj: Annotated) -> None:
        (obj.metadata_props if self.persistent else obj.meta).pop(self.name, None)


@dataclasses.dataclass(frozen=True)
class KeyFamily(Generic[T]):
    """Keys made on demand under one prefix (``mpqc.sens.<metric>``), all of one scope and type.

    A pass that reads "any sensitivity" declares the family; one that writes a metric's scores
    declares that metric's key.
    """

    prefix: str
    scope: Scope | None
    value_type: Any = Any
    doc: str = ""

    @property
    def name(self) -> str:
        return self.prefix + "*"

    def __str__(self) -> str:
        return self.name

    @property
    def type_text(self) -> str:
        return _type_text(self.value_type)

    def matches(self, name: str) -> bool:
        return name.startswith(self.prefix)

    def key(self, member: str) -> AnnotationKey[T]:
        name = self.prefix + member
        existing = _REGISTRY.get(name)
        if existing is not None:
            return existing
        assert self.scope is not None, f"{self.name} makes no keys"
        return AnnotationKey(name, self.scope, self.value_type, doc=f"{self.doc} ({member})")


@dataclasses.dataclass(frozen=True)
class SectionedKey(AnnotationKey[dict[str, dict[str, Any]]]):
    """A model annotation made of named sections, each written by one owner (a pass)."""

    def section(self, model: ir.Model, owner: str) -> dict[str, Any] | None:
        return (self.get(model) or {}).get(owner)

    def set_section(self, model: ir.Model, owner: str, section: dict[str, Any]) -> None:
        self.set(model, {**(self.get(model) or {}), owner: section})


def registered_keys() -> dict[str, AnnotationKey[Any]]:
    """All declared keys by name (sensitivity keys appear once a metric has been declared)."""
    return dict(_REGISTRY)


def annotated(model: ir.Model) -> Iterator[Annotated]:
    """Every object of ``model`` that can carry an annotation: the model, nodes and values,
    subgraphs included."""
    yield model
    for graph in (model.graph, *model.graph.subgraphs()):
        yield from graph.inputs
        yield from graph.initializers.values()
        for node in graph:
            yield node
            yield from node.outputs


def present_keys(model: ir.Model) -> set[str]:
    """Names of the mpqc annotation keys present anywhere in ``model``."""
    found: set[str] = set()
    for obj in annotated(model):
        found.update(k for k in obj.metadata_props if k.startswith("mpqc."))
        found.update(k for k in obj.meta if isinstance(k, str) and k.startswith("mpqc."))
    return found


def drop(model: ir.Model, names: set[str]) -> int:
    """Remove the named annotations everywhere in ``model``; returns how many were removed."""
    removed = 0
    for obj in annotated(model):
        for store in (obj.metadata_props, obj.meta):
            for name in [k for k in store if k in names]:
                del store[name]
                removed += 1
    return removed


# --- The keys -------------------------------------------------------------------------------


class CalibRange(TypedDict):
    """``mpqc.calib.range``: an activation's observed extremes and the clip range kept."""

    min: float
    max: float
    lo: NotRequired[float]
    hi: NotRequired[float]
    method: str
    samples: int


class _Widths(TypedDict):
    w: int
    a: int


class LayerBits(_Widths, total=False):
    """``mpqc.bits``: a layer's weight and activation bits; 32 means float; ``dynamic`` when the
    activation range is measured on every run (``w8adyn``). (``total=False`` rather than
    ``NotRequired``, which postponed annotations hide from Python 3.11's TypedDict.)"""

    dynamic: bool


def layer_bits(bits: tuple) -> LayerBits:
    """The ``mpqc.bits`` value of a choice (``core.Bits`` or a plain ``(w, a)`` pair)."""
    chosen = Bits.of(bits)
    value: LayerBits = {"w": chosen.w, "a": chosen.a}
    if chosen.dynamic:
        value["dynamic"] = True
    return value


def chosen_bits(value: LayerBits) -> Bits:
    """The choice an ``mpqc.bits`` value records."""
    return Bits(int(value["w"]), int(value["a"]), bool(value.get("dynamic", False)))


class CandidateCost(TypedDict):
    """One candidate's entry in ``mpqc.cost``."""

    latency_s: float
    energy_j: float
    size: float
    act_bytes: float
    bops: float
    bound: str
    native: bool


class ModelCost(TypedDict):
    """``mpqc.cost.total``: what budgets are relative to and what stays float."""

    spec: str
    reference_pair: str
    reference: dict[str, float]
    fixed: dict[str, float]
    candidates: list[str]
    block_size: int


class FrontPoint(TypedDict):
    """One point of ``mpqc.pareto``: the bits of every searched layer and what they score."""

    bits: dict[str, str]
    objectives: dict[str, float]
    exact: bool


class ParetoFront(TypedDict):
    """``mpqc.pareto``: the search's front and the point it chose."""

    strategy: str
    metric: str
    objectives: list[str]
    constraints: dict[str, float]
    points: list[FrontPoint]
    chosen: int
    chosen_objectives: dict[str, float]
    evaluations: int
    pinned: list[str]


CALIB_RANGE: AnnotationKey[CalibRange] = AnnotationKey(
    "mpqc.calib.range",
    "value",
    CalibRange,
    doc="Observed range of an activation on the calibration data: {min, max, method, samples}, "
    "plus the chosen clip range {lo, hi}.",
)
BITS: AnnotationKey[LayerBits] = AnnotationKey(
    "mpqc.bits",
    "node",
    LayerBits,
    doc="Chosen bits of a quantizable layer: {w, a}; 32 means float; dynamic: true for a range "
    "measured on every run.",
)
COST: AnnotationKey[dict[str, CandidateCost]] = AnnotationKey(
    "mpqc.cost",
    "node",
    dict[str, CandidateCost],
    doc="Per candidate 'w{w}a{a}' (and 'float'): latency, energy, bytes, BOPs from the hardware "
    "spec.",
)
MODEL_COST: AnnotationKey[ModelCost] = AnnotationKey(
    "mpqc.cost.total",
    "model",
    ModelCost,
    doc="Model totals: the reference configuration, float layers' fixed costs, the spec's name.",
)
PARETO: AnnotationKey[ParetoFront] = AnnotationKey(
    "mpqc.pareto",
    "model",
    ParetoFront,
    doc="The search's front: strategy, objectives, points (bits per layer and objective values), "
    "chosen index.",
)
REPORT = SectionedKey(
    "mpqc.report",
    "model",
    dict[str, dict[str, Any]],
    doc="What the final report shows, one section per reporting pass (verification, layers left "
    "float and why, recovery): {pass name: section}.",
)
SENSITIVITY: KeyFamily[dict[str, float]] = KeyFamily(
    "mpqc.sens.",
    "node",
    dict[str, float],
    doc="Sensitivity by a metric: candidate 'w{b}', 'a{b}' or 'w{w}a{a}' -> damage (higher is "
    "worse)",
)
SENSITIVITY_DETAIL: KeyFamily[dict[str, Any]] = KeyFamily(
    "mpqc.sensinfo.",
    "node",
    dict[str, Any],
    doc="The numbers a metric's sensitivity scores were computed from",
)
#: Every mpqc annotation: what an analysis that changes nothing preserves.
ALL: KeyFamily[Any] = KeyFamily("mpqc.", None, doc="every mpqc annotation")


def sensitivity_key(metric: str) -> AnnotationKey[dict[str, float]]:
    """The key ``mpqc.sens.<metric>``: per candidate, a damage score (higher is worse)."""
    return SENSITIVITY.key(metric)


def detail_key(metric: str) -> AnnotationKey[dict[str, Any]]:
    """``mpqc.sensinfo.<metric>``: the numbers behind a layer's scores (not scores themselves)."""
    return SENSITIVITY_DETAIL.key(metric)
