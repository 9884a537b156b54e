"""The typed annotation keys that passes read and write.

Every key is declared here once, with the scope it lives on (a node, a value, or the model) and
whether it persists. Persistent annotations are stored as canonical JSON in the object's
``metadata_props``, which ONNX serializes: an annotated model saved between passes reloads with
its annotations, and a user can stop after analysis, edit ``mpqc.bits`` in the file, and lower.
Keeping ``metadata_props`` as the only store (rather than mirroring it in ``meta``) means there is
no second copy to fall out of sync. Transient annotations (big arrays, caches) live in ``meta``,
which is never serialized.

Values are JSON-shaped (dicts with string keys, lists, numbers, strings). Encoding sorts keys and
rounds floats to a fixed number of significant digits, so the same analysis prints and saves the
same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any, Generic, Literal, TypeVar

import onnx_ir as ir

__all__ = [
    "AnnotationKey",
    "BITS",
    "CALIB_RANGE",
    "COST",
    "MODEL_COST",
    "PARETO",
    "REPORT",
    "SENS_PREFIX",
    "annotated",
    "canonical_json",
    "sensitivity_key",
    "registered_keys",
]

T = TypeVar("T")
Scope = Literal["node", "value", "model"]
Annotated = ir.Node | ir.Value | ir.Model

#: Significant digits kept for floats in persisted annotations and in IR dumps.
FLOAT_DIGITS = 6

_REGISTRY: dict[str, AnnotationKey[Any]] = {}


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


@dataclasses.dataclass(frozen=True)
class AnnotationKey(Generic[T]):
    """A named, scoped slot for pass results on IR objects."""

    name: str
    scope: Scope
    persistent: bool = True
    doc: str = ""

    def __post_init__(self) -> None:
        existing = _REGISTRY.get(self.name)
        if existing is not None and existing != self:
            raise ValueError(
                f"annotation key {self.name!r} declared twice with different definitions"
            )
        _REGISTRY[self.name] = self

    def get(self, obj: Annotated, default: T | None = None) -> T | None:
        if self.persistent:
            raw = obj.metadata_props.get(self.name)
            return default if raw is None else json.loads(raw)
        return obj.meta.get(self.name, default)

    def set(self, obj: Annotated, value: T) -> None:
        if self.persistent:
            obj.metadata_props[self.name] = canonical_json(value)
        else:
            obj.meta[self.name] = value

    def has(self, obj: Annotated) -> bool:
        return self.name in (obj.metadata_props if self.persistent else obj.meta)

    def remove(self, obj: Annotated) -> None:
        (obj.metadata_props if self.persistent else obj.meta).pop(self.name, None)


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

CALIB_RANGE: AnnotationKey[dict[str, Any]] = AnnotationKey(
    "mpqc.calib.range",
    "value",
    doc="Observed range of an activation on the calibration data: {min, max, method, samples}, "
    "plus the chosen clip range {lo, hi} when the method clips (percentile, entropy, mse).",
)
BITS: AnnotationKey[dict[str, int]] = AnnotationKey(
    "mpqc.bits",
    "node",
    doc="Chosen bits of a quantizable layer: {w, a}; 32 means float.",
)
COST: AnnotationKey[dict[str, dict[str, float]]] = AnnotationKey(
    "mpqc.cost",
    "node",
    doc=(
        "Per candidate 'w{w}a{a}' (and 'float'): latency_s, energy_j, bytes, bops from the "
        "hardware spec."
    ),
)
MODEL_COST: AnnotationKey[dict[str, Any]] = AnnotationKey(
    "mpqc.cost.total",
    "model",
    doc="Model totals: the reference configuration, float layers' fixed costs, the spec's name.",
)
PARETO: AnnotationKey[dict[str, Any]] = AnnotationKey(
    "mpqc.pareto",
    "model",
    doc=(
        "The search's front: strategy, objectives, points (bits per layer and objective values), "
        "chosen index."
    ),
)
REPORT: AnnotationKey[dict[str, Any]] = AnnotationKey(
    "mpqc.report",
    "model",
    doc=(
        "Results of verification and notes that the final report shows (e.g. layers left float "
        "and why)."
    ),
)

SENS_PREFIX = "mpqc.sens."


def sensitivity_key(metric: str) -> AnnotationKey[dict[str, float]]:
    """The key ``mpqc.sens.<metric>``: per candidate 'w{w}a{a}', a damage score (higher is
    worse)."""
    name = SENS_PREFIX + metric
    existing = _REGISTRY.get(name)
    if existing is not None:
        return existing
    return AnnotationKey(name, "node", doc=f"Sensitivity by {metric}: candidate -> damage score.")
