"""Physical quantities in specs: plain numbers in base units, or strings with a unit.

Datasheets quote "25.6 GB/s", "1 MiB", "0.9 pJ", "4 us"; converting by hand is where spec bugs come
from.  So every quantity field accepts either a number in the base unit of its dimension or a string
``"<number> <unit>"``.  The schema restricts each field to the units of its own dimension (a
bandwidth written in pJ is rejected there, with the allowed units named); this module only converts.

Throughput is counted in multiply-accumulates per second.  ``op/s`` units are accepted too and
follow the usual convention that one MAC is two operations, so "1 TOP/s" means 5e11 MAC/s.
"""

from __future__ import annotations

import re

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_SUB = {"": 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9, "p": 1e-12, "f": 1e-15}


def _table(names: dict[str, float], prefixes: dict[str, float]) -> dict[str, float]:
    return {p + n: pf * f for n, f in names.items() for p, pf in prefixes.items()}


#: dimension -> {unit: factor to the base unit}
UNITS: dict[str, dict[str, float]] = {
    "throughput": _table({"MAC/s": 1.0, "OP/s": 0.5, "op/s": 0.5, "OPS": 0.5}, _PREFIX),
    "bandwidth": _table({"B/s": 1.0}, _PREFIX | _BINARY),
    "bytes": _table({"B": 1.0}, _PREFIX | _BINARY),
    "energy": _table({"J": 1.0}, _SUB),
    "time": _table({"s": 1.0}, _SUB),
}

#: dimension -> the base unit numbers are read in
BASE_UNIT = {"throughput": "MAC/s", "bandwidth": "B/s", "bytes": "B", "energy": "J", "time": "s"}

#: dimension -> (low, high) in the base unit: the range any real chip falls in.  A value outside
#: is a typo or hostile (``1e400 TMAC/s``) and would only turn the cost model's sums into inf or
#: 0.  A low above zero makes the quantity strictly positive.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "throughput": (1.0, 1e18),
    "bandwidth": (1.0, 1e16),
    "bytes": (0.0, 2.0**60),
    "energy": (0.0, 1.0),
    "time": (0.0, 3600.0),
}

_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?"


def pattern(dimension: str) -> str:
    """The regular expression (used in schema.json) of a quantity string of ``dimension``."""
    units = "|".join(re.escape(u) for u in sorted(UNITS[dimension], key=len, reverse=True))
    return rf"^\s*{_NUMBER}\s*({units})\s*$"


_EXAMPLE = {
    "throughput": "48 GMAC/s",
    "bandwidth": "12.8 GB/s",
    "bytes": "1 MiB",
    "energy": "0.5 pJ",
    "time": "2 us",
}
_COMMON = {
    "throughput": "MAC/s, GMAC/s, TMAC/s, GOP/s, TOPS",
    "bandwidth": "B/s, MB/s, GB/s, GiB/s",
    "bytes": "B, KiB, MiB, kB, MB",
    "energy": "J, nJ, pJ, fJ",
    "time": "s, ms, us, ns",
}


def allowed_units(dimension: str) -> str:
    """A short human list of accepted units, for error messages and docs."""
    return (
        f"a non-negative number in {BASE_UNIT[dimension]} or a string such as "
        f"'{_EXAMPLE[dimension]}' ({_COMMON[dimension]}, ...)"
    )


def to_base(value: float | int | str, dimension: str) -> float:
    """Convert a schema-valid quantity to a float in the dimension's base unit."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(rf"\s*({_NUMBER})\s*(\S+)\s*", value)
    if match is None or match.group(2) not in UNITS[dimension]:
        raise ValueError(
            f"{value!r} is not a valid {dimension} quantity; allowed: {allowed_units(dimension)}"
        )
    return float(match.group(1)) * UNITS[dimension][match.group(2)]


_DISPLAY = {
    "throughput": ["MAC/s", "kMAC/s", "MMAC/s", "GMAC/s", "TMAC/s"],
    "bandwidth": ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"],
    "bytes": ["B", "KiB", "MiB", "GiB"],
    "energy": ["fJ", "pJ", "nJ", "uJ", "mJ", "J"],
    "time": ["ns", "us", "ms", "s"],
}


def format_quantity(value: float, dimension: str, digits: int = 4) -> str:
    """``value`` (base unit) as a readable quantity string that ``to_base`` parses back, e.g.
    '47.9 GMAC/s'."""
    if value == 0:
        return f"0 {BASE_UNIT[dimension]}"
    if value == float("inf"):
        return "unbounded"
    choices = [(UNITS[dimension][u], u) for u in _DISPLAY[dimension]]
    factor, unit = choices[0]
    for f, u in choices:
        if value >= f:
            factor, unit = f, u
    return f"{value / factor:.{digits}g} {unit}"
