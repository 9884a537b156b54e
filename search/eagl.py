"""``eagl``: EAGL / ALPS layer selection as a multiple-choice knapsack (METHODS §4).

EAGL's importance of keeping a layer at high precision is the entropy of its quantized weights;
ALPS's is the accuracy lost when only that layer is lowered. Either way the ``sensitivity-*``
pass writes it into the problem's sensitivity table as the damage of each lower choice, and the
selection is: minimize the summed damage subject to the budget — a 0-1 knapsack for two
candidates, a multiple-choice knapsack for more.

Solved exactly by dynamic programming over a discretized cost: each class's extra cost above its
cheapest choice is rounded *up* to whole units of ``(budget range) / resolution``, so every
answer truly fits its budget (with integer costs and a range ≤ ``resolution`` the units are 1
and the DP is exact). One DP pass yields the optimum for every budget at once, so the Pareto
sweep is free: ``budgets`` points are read off the table. With several constraints, or
``solver="ilp"``, the same knapsack goes through the ``ilp`` strategy's exact solver instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mpqc.search.evaluate import Evaluator, evaluate_points, evaluate_uniform
from mpqc.search.ilp import OneHotModel, budget_sweep, swept_objective
from mpqc.search.pareto import SearchResult, make_result
from mpqc.search.problem import Config, Problem, SearchError


@dataclass(frozen=True)
class Options:
    """Options of the ``eagl`` strategy."""

    solver: str = field(
        default="dp",
        metadata={"help": "dp (knapsack dynamic program, one constraint) or ilp (any constraints)"},
    )
    resolution: int | None = field(
        default=None,
        metadata={
            "help": "DP cost units across the budget range (default: max(4096, 32 per layer)); "
            "each layer loses under one unit to rounding, so more = closer to optimal"
        },
    )
    budgets: int = field(default=16, metadata={"help": "budget values in the Pareto sweep"})
    cost: str | None = field(
        default=None,
        metadata={
            "help": "knapsack cost (default: the first constraint, else the first cost objective)"
        },
    )


class KnapsackTable:
    """The multiple-choice knapsack DP of ``min Σ damage`` over whole cost units.

    ``best[b]`` is the least damage with at most ``b`` units of extra cost; ``choice`` keeps,
    per class and unit count, the candidate taken, for back-tracking.
    """

    def __init__(self, damage: np.ndarray, units: np.ndarray, capacity: int) -> None:
        """``damage``: ``(G, K)`` class table (+inf = no such candidate); ``units``: the same
        candidates' costs in whole units above each class's cheapest candidate."""
        self.capacity = capacity
        self.units = np.where(np.isfinite(damage), units, 0).astype(np.int64)
        best = np.zeros(capacity + 1)
        self.choice = np.zeros((len(damage), capacity + 1), dtype=np.int16)
        for g in range(len(damage)):
            new = np.full(capacity + 1, np.inf)
            for k in np.flatnonzero(np.isfinite(damage[g])):
                used = int(self.units[g, k])
                if used > capacity:
                    continue
                shifted = np.full(capacity + 1, np.inf)
                shifted[used:] = best[: capacity + 1 - used] + damage[g, k]
                better = shifted < new  # strict: ties keep the earlier, safer candidate
                new[better] = shifted[better]
                self.choice[g, better] = k
            best = new
        self.best = best

    def solve(self, units: int) -> np.ndarray | None:
        """Genes of the least-damage configuration within ``units``, None if none fits."""
        units = min(units, self.capacity)
        if units < 0 or not np.isfinite(self.best[units]):
            return None
        # the least damage within ``units``; among equals, the fewest units (the cheapest)
        b = int(np.flatnonzero(self.best[: units + 1] == self.best[: units + 1].min())[0])
        genes = np.zeros(len(self.choice), dtype=np.int64)
        for g in range(len(self.choice) - 1, -1, -1):
            genes[g] = self.choice[g, b]
            b -= int(self.units[g, genes[g]])
        return genes


def knapsack(
    problem: Problem, cost: str, resolution: int
) -> tuple[KnapsackTable, float, float, float]:
    """The DP table of ``problem`` against ``cost``, and how to convert budgets to units:
    returns ``(table, base, unit, high)`` with ``units = floor((limit − base) / unit)``."""
    damage = problem.class_table(problem.sensitivity_table())
    costs = problem.class_table(problem.cost_table(cost))
    cheapest = np.min(costs, axis=1)
    base = float(cheapest.sum()) + problem.fixed_costs[cost]
    extra = costs - cheapest[:, None]
    high = max(problem.total(cost, problem.safest()), problem.constraints.get(cost, -math.inf))
    span = max(high - base, 0.0)
    finite = extra[np.isfinite(extra)]
    integral = bool(np.all(finite == np.round(finite))) and span <= resolution
    unit = 1.0 if integral else (span / resolution if span > 0 else 1.0)
    units = np.where(np.isfinite(extra), np.ceil(extra / unit - 1e-9), np.inf)
    capacity = int(math.floor(span / unit + 1e-9))
    return KnapsackTable(damage, units, capacity), base, unit, high


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """Knapsack optima over a budget sweep (``rng`` unused: the method is exact)."""
    if options.solver not in ("dp", "ilp"):
        raise SearchError(f"eagl solver must be 'dp' or 'ilp', got {options.solver!r}")
    resolution = options.resolution or max(4096, 32 * len(problem.tie_classes))
    if resolution < 1 or options.budgets < 2:
        raise SearchError("eagl needs resolution >= 1 and budgets >= 2")
    cost = swept_objective(problem, options.cost)
    others = [name for name in problem.constraints if name != cost]
    notes = []
    if options.solver == "ilp" or others:
        if options.solver == "dp":
            notes.append(f"constraints on {', '.join(others)} besides {cost}: solved as an ILP")
        configs = budget_sweep(
            problem, OneHotModel(problem), problem.sensitivity_table(), cost, options.budgets
        )
    else:
        table, base, unit, high = knapsack(problem, cost, resolution)
        limits = list(np.linspace(base, high, options.budgets))
        if cost in problem.constraints:
            limits.append(problem.constraints[cost])
        configs: list[Config] = []
        for limit in sorted(set(limits)):
            genes = table.solve(int(math.floor((limit - base) / unit + 1e-9)))
            if genes is not None:
                configs.append(problem.expand(genes))
        notes.append(f"knapsack DP over {table.capacity} units of {unit:.6g} ({cost})")
    uniform = evaluate_uniform(problem, evaluator)
    candidates = evaluate_points(problem, evaluator, configs)
    return make_result("eagl", problem, candidates, uniform, evaluator.calls, notes)
