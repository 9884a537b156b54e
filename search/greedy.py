"""``greedy``: AIMET AMP's bit-dropping Pareto curve (METHODS §7, Pandey et al. 2023).

Phase 1 lists every *flip* — one tie class (AIMET's quantizer group) moved from the baseline to
one other candidate — and sorts the list by damage per unit of cost saved, the sensitivity table
standing in for AIMET's per-flip score (the ``sensitivity-*`` passes produce exactly those
one-group-at-a-time scores). Ties go, as in AIMET, to the higher bit sum, then the larger cost
reduction, then graph order.

Phase 2 applies the flips cumulatively from the all-safest baseline; a flip that would not lower
its class's cost any further is skipped, so cost falls strictly along the curve. Point ``i`` is
the configuration after ``i`` flips: a full Pareto curve from ``O(L·|B|)`` table look-ups.
The reverse mode starts all-cheapest and raises the most damaging classes first; its curve is
reported in the same (expensive → cheap) order.

Picking a point costs ``O(log L)`` evaluations: the constraints are met by the shortest prefix
whose costs fit (costs are monotone, no evaluation needed), and with ``allowed_drop`` a binary
search finds the longest prefix whose error stays within ``error(baseline) + allowed_drop``,
assuming, like AIMET, that error grows along the curve. ``probe="linear"`` scans instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mpqc.search.evaluate import Evaluator, evaluate_points, evaluate_uniform
from mpqc.search.ilp import swept_objective
from mpqc.search.pareto import Point, SearchResult, make_result
from mpqc.search.problem import ERROR, Config, Problem, SearchError


@dataclass(frozen=True)
class Options:
    """Options of the ``greedy`` strategy."""

    reverse: bool = field(
        default=False,
        metadata={"help": "start all-cheapest and raise the most sensitive groups first"},
    )
    allowed_drop: float | None = field(
        default=None,
        metadata={
            "help": "largest error increase over the all-safest baseline; None: only constraints"
        },
    )
    probe: str = field(
        default="binary",
        metadata={
            "help": "how to find the allowed-drop prefix: binary (O(log L) evaluations) or linear"
        },
    )
    cost: str | None = field(
        default=None,
        metadata={
            "help": "cost in the slope (default: the first constraint, else first cost objective)"
        },
    )
    curve_points: int = field(
        default=16,
        metadata={"help": "curve points evaluated for the front when the evaluator is exact"},
    )


def flip_order(problem: Problem, cost: str, reverse: bool = False) -> list[tuple[int, int]]:
    """Phase 1: ``(tie class, choice)`` flips, most worthwhile first."""
    sens = problem.class_table(problem.sensitivity_table())
    costs = problem.class_table(problem.cost_table(cost))
    flips = []
    for g, members in enumerate(problem.tie_classes):
        k_base = 0 if not reverse else int(problem.class_choices[g]) - 1
        s, c = sens[g], costs[g]
        pair_bits = [sum(pair) for pair in problem.choices[members[0]]]
        for k in range(int(problem.class_choices[g])):
            if k == k_base:
                continue
            moved = (c[k] - c[k_base]) if reverse else (c[k_base] - c[k])
            damage = (s[k_base] - s[k]) if reverse else (s[k] - s[k_base])
            if moved <= 0:  # a flip that does not move cost the right way is no use
                continue
            slope = damage / moved
            if reverse:  # repair the most damage per unit of cost spent; ties: fewer bits
                key = (-slope, pair_bits[k], -moved, members[0], k)
            else:  # AIMET: least damage per unit of cost saved; ties: more bits
                key = (slope, -pair_bits[k], -moved, members[0], k)
            flips.append((key, g, k))
    flips.sort()
    return [(g, k) for _, g, k in flips]


def pareto_curve(problem: Problem, cost: str, reverse: bool = False) -> list[Config]:
    """Phase 2: cumulative prefixes of the flip list, ordered from most to least expensive."""
    class_cost = problem.class_table(problem.cost_table(cost))
    genes = (
        np.zeros(len(problem.tie_classes), dtype=np.int64)
        if not reverse
        else problem.class_choices - 1
    )
    curve = [problem.expand(genes)]
    for g, k in flip_order(problem, cost, reverse):
        better = (
            class_cost[g, k] < class_cost[g, genes[g]]
            if not reverse
            else class_cost[g, k] > class_cost[g, genes[g]]
        )
        if better:
            genes = genes.copy()
            genes[g] = k
            curve.append(problem.expand(genes))
    return curve if not reverse else curve[::-1]


def longest_within(errors_of: Callable[[int], float], n: int, threshold: float, probe: str) -> int:
    """Largest ``i < n`` with ``errors_of(i) ≤ threshold``, assuming the errors grow with ``i``
    and index 0 qualifies (binary: ``O(log n)`` calls; linear: stops at the first miss)."""
    if probe == "linear":
        i = 0
        while i + 1 < n and errors_of(i + 1) <= threshold:
            i += 1
        return i
    low, high = 0, n - 1  # invariant: low qualifies; everything above high fails
    while low < high:
        mid = (low + high + 1) // 2
        if errors_of(mid) <= threshold:
            low = mid
        else:
            high = mid - 1
    return low


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """AMP's curve and pick (``rng`` unused: the method is deterministic)."""
    if options.probe not in ("binary", "linear"):
        raise SearchError(f"greedy probe must be 'binary' or 'linear', got {options.probe!r}")
    cost = swept_objective(problem, options.cost)
    curve = pareto_curve(problem, cost, options.reverse)
    uniform = evaluate_uniform(problem, evaluator)
    feasible = [problem.feasible(c) for c in curve]
    first_feasible = feasible.index(True) if any(feasible) else len(curve) - 1

    def error(i: int) -> float:
        return evaluator(curve[i])

    notes = [f"{len(curve)}-point curve over {cost}" + (" (reverse)" if options.reverse else "")]
    picked: int | None = None
    if options.allowed_drop is not None:
        threshold = error(0) + options.allowed_drop
        picked = longest_within(error, len(curve), threshold, options.probe)
        notes.append(f"longest prefix within error {threshold:.6g}: point {picked}")
        if picked < first_feasible:
            notes.append(
                "that point misses the constraints; the cheapest point meeting "
                "them was chosen instead"
            )
            picked = first_feasible
    if evaluator.exact and ERROR in problem.objectives:
        shown = set(np.linspace(0, len(curve) - 1, options.curve_points).round().astype(int))
        shown |= {first_feasible} | ({picked} if picked is not None else set())
        shown |= {i for i in range(len(curve)) if tuple(curve[i]) in evaluator.cache}
        indices = sorted(shown)
    else:
        indices = list(range(len(curve)))
    candidates = evaluate_points(problem, evaluator, [curve[i] for i in indices])
    result = make_result("greedy", problem, candidates, uniform, evaluator.calls, notes)
    if picked is not None:
        chosen: Point = candidates[indices.index(picked)]
        result = dataclasses.replace(result, chosen=chosen)
    return result
