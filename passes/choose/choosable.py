"""Which of a layer's candidates the search can still choose under the budgets: what sensitivity
analysis need not measure.

The ``ilp`` search returns the configuration of least additive damage that meets the budgets.
Damage is taken to fall strictly as bits rise: a pair ``(w, a)`` of a layer is *dominated* when the
layer offers another pair with at least as many weight bits and at least as many activation bits
in the same form (static or dynamic range), which then damages the layer's output less. If every
configuration made of undominated pairs meets every budget (checked with each layer at its
costliest undominated pair, the implicit latency limit of ``latency_cap.py`` included), replacing a
dominated pair by one that dominates it keeps the budgets and lowers the damage; so the answer
holds undominated pairs only, and the dominated ones need no score. A budget that needs cheaper
pairs (``--max-size`` below the all-8-bit model) leaves every pair choosable.

The undominated pairs of a layer often share a part (``w8`` in ``w8a8`` and ``w8adyn``): it adds
the same damage to each of them, so it cannot change the answer either (``Choosable.shared``). A
layer left with one choosable pair needs no measurement at all; its damage, the same in every
configuration, is then left out of the search's totals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from mpqc.core.bits import Bits
from mpqc.ir import annotations
from mpqc.ir.layers import Layer
from mpqc.passes.choose.budget import COST_FIELDS, limits, offered_pairs
from mpqc.passes.choose.latency_cap import LATENCY, REFERENCE

__all__ = ["Choosable", "choosable", "score_keys"]


@dataclasses.dataclass(frozen=True)
class Choosable:
    """The pairs the search can choose for one layer, the score keys that tell them apart (the only
    ones worth measuring) and those all of them add."""

    pairs: tuple[Bits, ...]
    measured: frozenset[str]
    shared: frozenset[str]


def score_keys(pair: Bits, scorable: Collection[str]) -> tuple[str, ...]:
    """The scores a pair's damage adds up, as the search adds them (``search._damage``): its
    weight's, and its activation's where the layer's activation is scored."""
    keys = [f"w{pair.w}"]
    if pair.activation_key in scorable:
        keys.append(pair.activation_key)
    return tuple(keys)


def _dominates(better: Bits, worse: Bits) -> bool:
    return (
        better != worse
        and better.dynamic == worse.dynamic
        and better.w >= worse.w
        and better.a >= worse.a
    )


def choosable(
    layers: Sequence[Layer],
    scorable: Mapping[str, Collection[str]],
    constraints: Mapping[str, str | float],
    totals: Mapping[str, object],
) -> dict[str, Choosable] | None:
    """Per layer, the pairs the search can choose (see the module docstring); None when a budget
    may need a dominated pair, or a layer has no cost table (run ``cost`` first).

    ``scorable``: per layer, the score keys the sensitivity pass can measure (the search offers
    no pair whose weight, or dynamic range, has no score); ``constraints``: the user's budgets;
    ``totals``: ``mpqc.cost.total``.
    """
    if not totals:
        return None
    offered: dict[str, list[Bits]] = {}
    for layer in layers:
        table = annotations.COST.get(layer.node)
        if table is None:
            return None
        keys = scorable[layer.name]
        offered[layer.name] = [
            pair
            for pair in offered_pairs(table)
            if f"w{pair.w}" in keys and (not pair.dynamic or pair.activation_key in keys)
        ]
        if not offered[layer.name]:
            return None  # the search says why
    kept = {
        name: [p for p in pairs if not any(_dominates(q, p) for q in pairs)]
        for name, pairs in offered.items()
    }
    budgets = limits(constraints, totals)
    fixed: Mapping[str, float] = totals.get("fixed", {})  # type: ignore[assignment]
    if budgets and LATENCY not in budgets:
        if not all(REFERENCE in pairs for pairs in offered.values()):
            return None  # the search's implicit latency limit is not known here
        budgets[LATENCY] = _total(layers, {n: [REFERENCE] for n in offered}, LATENCY, fixed)
    for objective, limit in budgets.items():
        if _total(layers, kept, objective, fixed) > limit:
            return None
    result = {}
    for name, pairs in kept.items():
        keys = [frozenset(score_keys(pair, scorable[name])) for pair in pairs]
        shared = frozenset.intersection(*keys)
        result[name] = Choosable(tuple(pairs), frozenset.union(*keys) - shared, shared)
    return result


def _total(
    layers: Sequence[Layer],
    pairs: Mapping[str, Sequence[Bits]],
    objective: str,
    fixed: Mapping[str, float],
) -> float:
    """The objective's total with every layer at its costliest pair among ``pairs``."""
    field = COST_FIELDS[objective]
    total = float(fixed.get(field, 0.0))
    for layer in layers:
        table = annotations.COST.get(layer.node) or {}
        total += max(float(table[str(p)][field]) for p in pairs[layer.name])  # type: ignore[index]
    return total
