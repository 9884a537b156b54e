"""Which of a layer's candidates the search can still choose under the budgets: what sensitivity
analysis need not measure.

The ``ilp`` search returns the configuration of least additive damage that meets the budgets.
Damage is taken to fall strictly as bits rise: a pair ``(w, a)`` of a layer is *dominated* when the
layer offers another pair with at least as many weight bits and at least as many activation bits
in the same form (static or dynamic range), which then damages the layer's output less.

Kept pairs start as the undominated ones. A budget is *tight* when some configuration of kept pairs
exceeds it (each layer at its costliest kept pair; the implicit latency limit of
``latency_cap.py`` counts as a budget). A dominated pair is kept too unless a pair dominating it
costs no more of every tight budget; this repeats until nothing is added. Then in any
configuration that meets the budgets, replacing each pair that is not kept by such a dominating
pair (again, until it is kept) lowers the damage, keeps the tight budgets (no step costs more)
and the others (every configuration of kept pairs meets them): the search's answer holds kept
pairs only, and the others need no score. With no budget, or one the all-8-bit model meets, the
lower bits go unmeasured (those a cost model prices faster than 8 bits stay); a budget that needs
cheaper pairs keeps them all.

A dominated pair kept only because it is cheaper in a tight budget may still be settled out by
scores (``Choices.settled``): with the undominated pairs measured first, if the configuration of
every layer's least damaging undominated pair meets the budgets, it is the answer (any
configuration with a dominated pair damages more), and the dominated pairs need no score.

The undominated pairs of a layer often share a part (``a8`` in ``w8a8`` and ``w4a8``): it adds
the same damage to each of them, so it cannot change the answer either (``Choosable.shared``). A
pair scored as a pair (``w8a8`` where the layer also has a dynamic range, sensitivity-output says
why) shares nothing: its damage is its own score. A
layer left with one choosable pair needs no measurement at all; its damage, the same in every
configuration, is then left out of the search's totals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from mpqc.core.bits import Bits
from mpqc.ir import annotations
from mpqc.ir.layers import Layer
from mpqc.passes.choose.budget import COST_FIELDS, limits, offered_pairs
from mpqc.passes.choose.latency_cap import LATENCY, REFERENCE

__all__ = ["Choices", "Choosable", "choosable", "score_keys"]


@dataclasses.dataclass(frozen=True)
class Choosable:
    """The pairs the search can choose for one layer, the score keys that tell them apart (the only
    ones worth measuring) and those all of them add."""

    pairs: tuple[Bits, ...]
    measured: frozenset[str]
    shared: frozenset[str]


def score_keys(pair: Bits, scorable: Collection[str]) -> tuple[str, ...]:
    """The scores a pair's damage adds up, as the search adds them (``search._damage``): the
    pair's own where it is scored as a pair (``w8a8``, an integer kernel), else its weight's, and
    its activation's where the layer's activation is scored."""
    if str(pair) in scorable:
        return (str(pair),)
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
) -> Choices | None:
    """Per layer, the pairs the search can choose (see the module docstring); None when a layer
    has no cost table (run ``cost`` first) or the search's implicit latency limit is unknown.

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
    budgets = limits(constraints, totals)
    fixed: Mapping[str, float] = totals.get("fixed", {})  # type: ignore[assignment]
    if budgets and LATENCY not in budgets:
        if not all(REFERENCE in pairs for pairs in offered.values()):
            return None  # the search's implicit latency limit is not known here
        budgets[LATENCY] = _total(layers, {n: [REFERENCE] for n in offered}, LATENCY, fixed)
    costs = {
        layer.name: _costs(layer, offered[layer.name], [COST_FIELDS[o] for o in budgets])
        for layer in layers
    }
    # Grow the kept pairs from the undominated ones to a fixpoint: the budgets some configuration
    # of kept pairs may exceed are tight, and a dominated pair stays unless a pair dominating it
    # costs no more of every tight budget.
    undominated = {
        name: [p for p in pairs if not any(_dominates(q, p) for q in pairs)]
        for name, pairs in offered.items()
    }
    kept = {name: list(pairs) for name, pairs in undominated.items()}
    while True:
        tight = [
            index
            for index, (objective, limit) in enumerate(budgets.items())
            if _total(layers, kept, objective, fixed) > limit
        ]
        grown = {
            name: [
                pair
                for pair in pairs
                if pair in kept[name]
                or not any(
                    _dominates(other, pair)
                    and all(costs[name][other][i] <= costs[name][pair][i] for i in tight)
                    for other in pairs
                )
            ]
            for name, pairs in offered.items()
        }
        if grown == kept:
            break
        kept = grown
    return Choices(
        _choosable(kept, scorable), _choosable(undominated, scorable), list(layers), budgets, fixed
    )


def _choosable(
    pairs: Mapping[str, Sequence[Bits]], scorable: Mapping[str, Collection[str]]
) -> dict[str, Choosable]:
    result = {}
    for name, choices in pairs.items():
        keys = [frozenset(score_keys(pair, scorable[name])) for pair in choices]
        shared = frozenset.intersection(*keys)
        result[name] = Choosable(tuple(choices), frozenset.union(*keys) - shared, shared)
    return result


@dataclasses.dataclass(frozen=True)
class Choices:
    """What ``choosable`` found: the ``kept`` pairs of every layer, among them the ``undominated``
    ones, and the budgets they were checked against (the implicit latency limit included)."""

    kept: dict[str, Choosable]
    undominated: dict[str, Choosable]
    layers: list[Layer]
    budgets: dict[str, float]
    fixed: Mapping[str, float]

    def may_settle(self) -> bool:
        """Whether some configuration of undominated pairs meets every budget, so that their
        scores alone may settle the choice (``settled``): else the kept pairs are all needed."""
        if self.kept == self.undominated:
            return False
        return all(
            _total(self.layers, self._pairs(), objective, self.fixed, min) <= limit
            for objective, limit in self.budgets.items()
        )

    def settled(self, scores: Mapping[str, Mapping[str, float]]) -> bool:
        """Whether the configuration of every layer's least damaging undominated pair (by the
        ``scores`` of ``undominated[...].measured``) meets every budget. Then it is the search's
        answer: a dominated pair damages more than the pair dominating it, so any configuration
        with one damages more than this one, and the other kept pairs need no score. A tie for
        the least damage settles nothing."""
        best = {}
        for name, choosable in self.undominated.items():
            damage = [
                sum(
                    scores[name][key]
                    for key in score_keys(pair, choosable.measured)
                    if key in choosable.measured
                )
                for pair in choosable.pairs
            ]
            least = min(damage)
            if damage.count(least) > 1:
                return False
            best[name] = [choosable.pairs[damage.index(least)]]
        return all(
            _total(self.layers, best, objective, self.fixed) <= limit
            for objective, limit in self.budgets.items()
        )

    def _pairs(self) -> dict[str, Sequence[Bits]]:
        return {name: choosable.pairs for name, choosable in self.undominated.items()}


def _total(
    layers: Sequence[Layer],
    pairs: Mapping[str, Sequence[Bits]],
    objective: str,
    fixed: Mapping[str, float],
    pick: Callable[[Iterable[float]], float] = max,
) -> float:
    """The objective's total with every layer at its costliest pair among ``pairs`` (``pick``:
    ``min`` for its cheapest)."""
    field = COST_FIELDS[objective]
    total = float(fixed.get(field, 0.0))
    for layer in layers:
        table = annotations.COST.get(layer.node) or {}
        total += pick(float(table[str(p)][field]) for p in pairs[layer.name])  # type: ignore[index]
    return total


def _costs(layer: Layer, pairs: Sequence[Bits], fields: Sequence[str]) -> dict[Bits, list[float]]:
    table = annotations.COST.get(layer.node) or {}
    return {pair: [float(table[str(pair)][f]) for f in fields] for pair in pairs}  # type: ignore[index]
