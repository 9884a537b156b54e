"""Budgets and priced choices as the search reads them: what ``0.25x`` or ``3MB`` means, which cost
field each objective sums, which (weight, activation) pairs a layer's cost table offers.

Shared by the search and by the passes that decide before it what it can choose
(``choosable.py``), so both read the same budgets from the same tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from mpqc.core.bits import Bits
from mpqc.core.errors import MpqcError
from mpqc.hwspecs.units import to_base
from mpqc.passes.infra.base import PassInputError

__all__ = ["COST_FIELDS", "limits", "offered_pairs", "resolve_budget"]

_DIMENSION = {"size": "bytes", "latency": "time", "energy": "energy"}
#: The field of a layer's cost table (``mpqc.cost``) that each objective sums.
COST_FIELDS = {"size": "size", "latency": "latency_s", "energy": "energy_j", "bops": "bops"}
_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def resolve_budget(objective: str, text: str | float, reference: float) -> float:
    """A budget in the objective's base unit (bytes, s, J, BOPs); ``0.25x`` is relative to
    ``reference``.

    Only a positive, finite budget can be met: zero or a negative one would otherwise reach the
    search and come back as "infeasible" (exit 2) for what is a typing error.
    """
    budget = _parse_budget(objective, text, reference)
    if not (math.isfinite(budget) and budget > 0):
        raise PassInputError(
            f"{text!r}: a budget must be a positive, finite amount, e.g. 0.25x",
            field=f"max_{objective}",
        )
    return budget


def _parse_budget(objective: str, text: str | float, reference: float) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    text = text.strip()
    if text.endswith("x"):
        try:
            return float(text[:-1]) * reference
        except ValueError:
            raise PassInputError(
                f"{text!r}: a ratio is a number followed by x, e.g. 0.25x",
                field=f"max_{objective}",
            ) from None
    if objective == "bops":
        match = re.fullmatch(r"([0-9.eE+-]+)\s*([kKMGT]?)(?:BOPs?)?", text)
        if not match:
            raise PassInputError(
                f"{text!r}: give a count such as 2G or a ratio such as 0.25x", field="max_bops"
            )
        try:
            return float(match.group(1)) * _SI[match.group(2)]
        except ValueError:
            raise PassInputError(
                f"{text!r}: give a count such as 2G or a ratio such as 0.25x", field="max_bops"
            ) from None
    if objective not in _DIMENSION:
        raise PassInputError(f"unknown budget '{objective}': use size, latency, energy or bops")
    try:
        return to_base(text, _DIMENSION[objective])
    except ValueError as exc:
        raise PassInputError(str(exc), field=f"max_{objective}") from None


def offered_pairs(table: Mapping[str, object]) -> list[Bits]:
    """The bit choices a cost table prices (its other keys are totals), safest first."""
    pairs = []
    for key in table:
        try:
            pairs.append(Bits.parse(key, widths=None))
        except MpqcError:
            continue
    return sorted(pairs, key=lambda p: (-p[0] * p[1], -p[1], -p[0], p.dynamic))


def limits(constraints: Mapping[str, str | float], totals: Mapping[str, Any]) -> dict[str, float]:
    """The user's budgets (``context.constraints``) in base units, ratios resolved against the
    reference configuration in the model's cost totals (``mpqc.cost.total``)."""
    reference = totals.get("reference", {})
    return {
        objective: resolve_budget(
            objective, text, float(reference.get(COST_FIELDS.get(objective, ""), math.nan))
        )
        for objective, text in constraints.items()
    }
