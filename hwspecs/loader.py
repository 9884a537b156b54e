"""Reading spec YAML: size and encoding checks, ``base:`` inheritance, schema validation, units.

Why this order:
1. Read each file into a mapping (``document``: size, encoding, nesting and alias limits).
2. Resolve ``base:`` first and validate the *merged* document: a child that overrides two fields is
   not a full spec on its own, but the result must be.  Merging is deep for mappings; lists and
   scalars are replaced; ``null`` deletes an inherited key (e.g. drop a precision pair the derived
   chip lacks).
3. JSON Schema (``schema.json``, the single statement of what a spec may contain) checks structure,
   types, units and allowed bit-widths; then a few cross-field checks the schema cannot express.
4. Every quantity is converted to its base unit and must be finite and within ``units.PLAUSIBLE``.
Every failure is a ``SpecError``: file, field path, what is allowed.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema

from mpqc.core.bits import Bits
from mpqc.hwspecs import units
from mpqc.hwspecs.document import read_document
from mpqc.hwspecs.errors import SpecError
from mpqc.hwspecs.spec import (
    BitScaling,
    HardwareSpec,
    Instruction,
    MemoryLevel,
    Overhead,
    Precision,
)


def bundled_dir() -> Path:
    return Path(str(resources.files("mpqc.hwspecs") / "specs"))


def names() -> list[str]:
    """Names of the bundled specs, sorted."""
    return sorted(p.stem for p in bundled_dir().glob("*.yaml"))


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads((Path(str(resources.files("mpqc.hwspecs"))) / "schema.json").read_text())


def locate(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A bundled name (``x86_avx2``) or a path (relative to the including spec, if any)."""
    text = str(name_or_path)
    if (
        isinstance(name_or_path, Path)
        or text.endswith((".yaml", ".yml"))
        or "/" in text
        or "\\" in text
    ):
        path = Path(text).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to.parent / path
        if not path.is_file():
            raise SpecError(
                path,
                "",
                "no such spec file",
                "a bundled name (" + ", ".join(names()) + ") or a YAML path",
            )
        return path.resolve()
    bundled = bundled_dir() / f"{text}.yaml"
    if not bundled.is_file():
        raise SpecError(
            text, "", "unknown spec name", ", ".join(names()) + ", or a path to a YAML file"
        )
    return bundled.resolve()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge recursively, ``None`` deletes, the rest
    replaces."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The document at ``path`` merged over its ``base:`` chain (cycles are a SpecError)."""
    document = read_document(path)
    base = document.pop("base", None)
    document.setdefault("name", path.stem)
    if base is None:
        return document
    if not isinstance(base, str) or not base:
        raise SpecError(
            path,
            "base",
            f"expected a spec name or path, got {base!r}",
            "a bundled name or a YAML path",
        )
    try:
        base_path = locate(base, relative_to=path)
    except SpecError as exc:
        raise SpecError(path, "base", f"{base!r}: {exc.problem}", exc.allowed) from None
    if base_path in chain or base_path == path:
        cycle = " -> ".join(p.name for p in (*chain, path, base_path))
        raise SpecError(
            path,
            "base",
            f"inheritance cycle {cycle}",
            "a chain of bases that ends in a spec without base:",
        )
    parent = resolve(base_path, (*chain, path))
    parent.pop("provenance", None)
    return deep_merge(parent, document)


# -- schema errors ---------------------------------------------------------------------------------


def _field_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_error(path: Path, error: jsonschema.ValidationError) -> SpecError:
    """Turn the most relevant jsonschema error into file / field / what is allowed."""
    if (
        error.validator in ("anyOf", "oneOf")
        and "description" not in error.schema
        and error.context
    ):
        error = jsonschema.exceptions.best_match(error.context)
    where = list(error.absolute_path)
    schema_ = error.schema if isinstance(error.schema, dict) else {}
    described = schema_.get("description")
    instance = error.instance
    validator = error.validator
    if validator == "required":
        missing = next(field for field in error.validator_value if field not in instance)
        return SpecError(path, _field_path([*where, missing]), "missing required field", described)
    if validator == "additionalProperties":
        allowed = sorted(schema_.get("properties", {}))
        extra = sorted(set(instance) - set(allowed))
        return SpecError(path, _field_path([*where, extra[0]]), "unknown field", ", ".join(allowed))
    if "propertyNames" in error.schema_path:  # jsonschema reports the bad key as the instance
        return SpecError(path, _field_path([*where, instance]), "key not allowed", described)
    if validator == "type":
        return SpecError(
            path,
            _field_path(where),
            f"expected {error.validator_value}, got {_short(instance)}",
            described,
        )
    if validator == "enum":
        return SpecError(
            path,
            _field_path(where),
            f"{_short(instance)} is not allowed",
            described or str(error.validator_value),
        )
    if validator in ("anyOf", "oneOf", "pattern"):
        negative = (
            isinstance(instance, (int, float)) and not isinstance(instance, bool) and instance < 0
        )
        problem = f"negative value {instance!r}" if negative else f"{_short(instance)} is not valid"
        return SpecError(path, _field_path(where), problem, described)
    return SpecError(path, _field_path(where), error.message, described)


def validate_document(path: Path, document: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    errors = list(validator.iter_errors(document))
    if errors:
        raise _schema_error(path, max(errors, key=jsonschema.exceptions.relevance))


# -- building the spec -----------------------------------------------------------------------------


def _pair_bits(key: str) -> tuple[int | None, int | None, bool, bool]:
    """(weight bits, activation bits, signed, dynamic) of a precision key."""
    if key == "float":
        return None, None, False, False
    # the schema's propertyNames pattern guarantees the form; a spec may list 1-bit pairs
    bits = Bits.parse(key.removesuffix("_signed"), widths=None)
    return bits.w, bits.a, key.endswith("_signed"), bits.dynamic


def _finite(path: Path, field: str, value: Any, amount: float, allowed: str) -> float:
    if not math.isfinite(amount):
        raise SpecError(path, field, f"{_short(value)} is not a finite number", allowed)
    return amount


def _quantity(path: Path, field: str, value: float | int | str, dimension: str) -> float:
    """``value`` in the base unit of ``dimension``, refused unless finite and plausible."""
    amount = _finite(
        path, field, value, units.to_base(value, dimension), units.allowed_units(dimension)
    )
    low, high = units.PLAUSIBLE[dimension]
    if low > 0 and not amount > 0:
        raise SpecError(
            path, field, f"must be greater than zero, got {amount}", "a positive quantity"
        )
    if not low <= amount <= high:
        bound, limit = ("at least", low) if amount < low else ("at most", high)
        raise SpecError(
            path,
            field,
            f"{_short(value)} is beyond any real chip",
            f"{bound} {units.format_quantity(limit, dimension)}",
        )
    return amount


def _grid_bits(path: Path, field: str, entry: dict[str, Any], wbits: int | None) -> int | None:
    if "weight_grid_bits" not in entry:
        return None
    bits = int(entry["weight_grid_bits"])
    if wbits is None or bits > wbits:
        raise SpecError(
            path,
            f"{field}.weight_grid_bits",
            f"{bits} is wider than the pair's {wbits}-bit weights",
            f"an integer up to {wbits}",
        )
    # Equal to the pair's bits means the full grid: how a spec undoes a narrowing it inherits.
    return bits if bits < wbits else None


def _precisions(path: Path, doc: dict[str, Any]) -> dict[str, Precision]:
    entries: dict[str, dict[str, Any]] = doc["precisions"]
    weight_bits, act_bits = set(doc["bits"]["weights"]), set(doc["bits"]["activations"])
    built: dict[str, Precision] = {}

    def build(key: str, visiting: tuple[str, ...]) -> Precision:
        if key in built:
            return built[key]
        field = f"precisions.{key}"
        if key not in entries:
            raise SpecError(
                path,
                f"precisions.{visiting[-1]}.emulated_as",
                f"{key!r} is not a precision of this spec",
                ", ".join(sorted(entries)),
            )
        if key in visiting:
            raise SpecError(
                path,
                f"{field}.emulated_as",
                "emulation cycle " + " -> ".join((*visiting, key)),
                "a chain that ends in a native pair",
            )
        entry = entries[key]
        wbits, abits, signed, dynamic = _pair_bits(key)
        if wbits is not None and wbits not in weight_bits:
            raise SpecError(
                path, field, f"weight bits {wbits} not in bits.weights", str(sorted(weight_bits))
            )
        if abits is not None and abits not in act_bits:
            raise SpecError(
                path,
                field,
                f"activation bits {abits} not in bits.activations",
                str(sorted(act_bits)),
            )
        target = build(entry["emulated_as"], (*visiting, key)) if "emulated_as" in entry else None
        for unpack_field in ("weight_unpack", "weight_unpack_ops"):
            if unpack_field in entry and target is None:
                raise SpecError(
                    path,
                    f"{field}.{unpack_field}",
                    "only an emulated pair unpacks weights",
                    f"{unpack_field} together with emulated_as",
                )
        throughput = (
            _quantity(path, f"{field}.throughput", entry["throughput"], "throughput")
            if "throughput" in entry
            else target.throughput  # type: ignore[union-attr]
        )
        energy = (
            _quantity(path, f"{field}.energy_per_mac", entry["energy_per_mac"], "energy")
            if "energy_per_mac" in entry
            else target.energy_per_mac  # type: ignore[union-attr]
        )
        built[key] = Precision(
            key=key,
            wbits=wbits,
            abits=abits,
            act_signed=signed,
            dynamic=dynamic,
            throughput=throughput,
            energy_per_mac=energy,
            emulated_as=None if target is None else target.key,
            emulated_abits=None if target is None else target.abits,
            weight_unpack=_quantity(path, f"{field}.weight_unpack", entry["weight_unpack"], "time")
            if "weight_unpack" in entry
            else None,
            weight_unpack_ops=MappingProxyType(
                {
                    op: _quantity(path, f"{field}.weight_unpack_ops.{op}", t, "time")
                    for op, t in entry.get("weight_unpack_ops", {}).items()
                }
            ),
            depthwise_throughput=(
                _quantity(
                    path,
                    f"{field}.depthwise_throughput",
                    entry["depthwise_throughput"],
                    "throughput",
                )
                if "depthwise_throughput" in entry
                else (None if target is None else target.depthwise_throughput)
            ),
            weight_grid_bits=_grid_bits(path, field, entry, wbits),
        )
        return built[key]

    for key in entries:
        build(key, ())
    return built


def _memory(path: Path, doc: dict[str, Any]) -> tuple[MemoryLevel, ...]:
    levels = [
        MemoryLevel(
            name=name,
            capacity=_quantity(path, f"memory.{name}.capacity", entry["capacity"], "bytes")
            if "capacity" in entry
            else math.inf,
            bandwidth=_quantity(path, f"memory.{name}.bandwidth", entry["bandwidth"], "bandwidth"),
            energy_per_byte=_quantity(
                path, f"memory.{name}.energy_per_byte", entry["energy_per_byte"], "energy"
            ),
        )
        for name, entry in doc["memory"].items()
    ]
    levels.sort(key=lambda level: level.capacity)
    unbounded = [level.name for level in levels if math.isinf(level.capacity)]
    if len(unbounded) > 1:
        raise SpecError(
            path,
            f"memory.{unbounded[1]}.capacity",
            "missing; only one level may be unbounded",
            "a capacity such as '32 MiB'",
        )
    return tuple(levels)


def _instruction(text: str) -> Instruction:
    inputs, output = text.split("->")
    return Instruction(tuple(t.strip() for t in inputs.split(",")), output.strip())


def build_spec(path: Path, doc: dict[str, Any]) -> HardwareSpec:
    precisions = _precisions(path, doc)
    bit_scaling = None
    if "bit_scaling" in doc:
        anchor_key = doc["bit_scaling"]["anchor"]
        if anchor_key not in precisions or not precisions[anchor_key].native:
            raise SpecError(
                path,
                "bit_scaling.anchor",
                f"{anchor_key!r} is not a native precision of this spec",
                ", ".join(k for k, p in precisions.items() if p.native and not p.is_float),
            )
        max_speedup = doc["bit_scaling"].get("max_speedup")
        if max_speedup is not None:
            _finite(path, "bit_scaling.max_speedup", max_speedup, max_speedup, "a number >= 1")
        bit_scaling = BitScaling(
            precisions[anchor_key], math.inf if max_speedup is None else float(max_speedup)
        )
    return HardwareSpec(
        name=doc["name"],
        description=" ".join(doc["description"].split()),
        source=str(path),
        weight_bits=tuple(sorted(doc["bits"]["weights"])),
        act_bits=tuple(sorted(doc["bits"]["activations"])),
        precisions=MappingProxyType(precisions),
        memory=_memory(path, doc),
        overheads=MappingProxyType(
            {
                op: Overhead(
                    _quantity(path, f"overheads.{op}.fixed", e.get("fixed", 0), "time"),
                    _quantity(path, f"overheads.{op}.per_element", e.get("per_element", 0), "time"),
                )
                for op, e in doc.get("overheads", {}).items()
            }
        ),
        ops=MappingProxyType(
            {op: tuple(_instruction(i) for i in items) for op, items in doc.get("ops", {}).items()}
        ),
        bit_scaling=bit_scaling,
        threads=doc.get("threads"),
        packed_operands=bool(doc.get("packed_operands", False)),
        integer_layout=MappingProxyType(dict(doc.get("integer_layout", {}))),
        session_overhead=_quantity(
            path, "session_overhead", doc.get("session_overhead", 0), "time"
        ),
        fused_activations=MappingProxyType(
            {kind: frozenset(ops) for kind, ops in doc.get("fused_activations", {}).items()}
        ),
    )


def load_path(path: Path) -> HardwareSpec:
    """The spec in the file at ``path``, parsed once per version of the file.

    Specs are immutable, so loading the same unchanged file twice returns the same object: a
    pipeline asks for its spec in every pass that prices or lowers.
    """
    stat = path.stat()
    return _load_version(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _load_version(path: Path, mtime_ns: int, size: int) -> HardwareSpec:
    document = resolve(path)
    validate_document(path, document)
    return build_spec(path, document)
