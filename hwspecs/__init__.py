"""Hardware specs and the cost model (layer 2: knows nothing of the IR or passes).

A spec is a YAML file validated against ``schema.json``; ``load`` turns a bundled name or a path
into a frozen ``HardwareSpec``, and ``CostModel`` prices ``LayerDesc``s on it.  Bundled specs live
in ``specs/*.yaml``; every number there cites its source or says why it is an estimate.
"""

from __future__ import annotations

from pathlib import Path

from mpqc.hwspecs import native
from mpqc.hwspecs.cost import Cost, CostModel, LayerDesc
from mpqc.hwspecs.errors import SpecError, UnsupportedPrecisionError
from mpqc.hwspecs.loader import load_path, locate, names
from mpqc.hwspecs.spec import HardwareSpec, Instruction, MemoryLevel, Overhead, Precision

__all__ = [
    "Cost",
    "CostModel",
    "HardwareSpec",
    "Instruction",
    "LayerDesc",
    "MemoryLevel",
    "Overhead",
    "Precision",
    "SpecError",
    "UnsupportedPrecisionError",
    "load",
    "names",
    "validate",
]


def load(name_or_path: str | Path | HardwareSpec) -> HardwareSpec:
    """A bundled spec by name (``"x86_avx2"``), ``"auto"`` (this machine, profiled once:
    ``native``) or a YAML path; a ``HardwareSpec`` passes through."""
    if isinstance(name_or_path, HardwareSpec):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in native.NAMES:
        path = native.profiled()
    else:
        path = locate(name_or_path)
    return load_path(path)


def validate(path: str | Path) -> HardwareSpec:
    """Check a spec file (raising ``SpecError`` with file, field and what is allowed); returns it
    loaded."""
    return load_path(locate(Path(path)))
