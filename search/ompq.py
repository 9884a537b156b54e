"""``ompq``: OMPQ's bit allocation — a linear program over weight bit-widths (METHODS §3).

OMPQ (Ma et al., AAAI 2023; code ``MAC-AutoML/OMPQ``, ``mixed_bit/feature_extract.py``) gives
each layer an importance ``w_i`` from the orthogonality of its features (the
``sensitivity-orthogonality`` pass) and allocates weight bits by a linear program, not an integer
search:

    maximize  Σ_i w_i · b_i   subject to   Σ_i P_i · b_i ≤ T − T_fixed,   lo_i ≤ b_i ≤ hi_i

with ``P_i`` the layer's bytes per weight bit, then rounds the continuous bits. The released code
rounds to the nearest integer (``np.around``) except on ResNet-18, where a depth-first search
(``DFS_bit``) picks floor or ceiling per layer so that the rounded model spends as much of the LP's
budget as possible without exceeding it. Both are here (``rounding=nearest|fit``).

How the paper's terms map onto a `Problem`, and why:

* **Bits.** OMPQ chooses weight bits; activations stay at 8 (its PTQ runs). A layer's *ladder* is
  its distinct weight widths, each paired with the widest activation the layer offers at that
  width, so the spec decides which widths exist; the LP's box is the ladder's ends.
* **Importance per bit.** ``sensitivity-orthogonality`` writes the damage of ``b`` bits as
  ``w_i · (b_max − b) / b_max``, a line in ``b`` whose slope is OMPQ's ``w_i / b_max``. The LP
  reads the layer's importance per bit as the least-squares slope of its damage over its ladder:
  exactly OMPQ's objective for that table, and a linear stand-in for any other metric's.
* **Budget.** Every constraint of the problem becomes one LP row, each layer's cost a line through
  its ladder's cheapest and widest points (exact for size, whose cost *is* linear in bits; a chord
  for latency or energy). After rounding, the real cost tables decide: if the rounded allocation
  still misses a constraint it is repaired by lowering, one ladder step at a time, the layer that
  loses the least importance per (budget-normalized) cost saved.
* **Tied layers** share one variable; its importance and costs are the members' sums.

The front comes from a sweep like the other budgeted strategies: the LP and rounding are solved
for ``budgets`` limits between the all-lowest and all-widest ladder totals (plus the user's limit),
and each allocation is one point. The chosen point is the allocation at the user's limit — OMPQ's
answer — even where another swept point has a lower error estimate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from mpqc.search.evaluate import Evaluator, evaluate_points, evaluate_uniform
from mpqc.search.ilp import swept_objective
from mpqc.search.pareto import SearchResult, make_result
from mpqc.search.problem import FEASIBILITY_RTOL, Config, Problem, SearchError

__all__ = ["Allocator", "Ladder", "Options", "relaxed_bits", "search"]

ROUNDINGS = ("fit", "nearest")


@dataclass(frozen=True)
class Options:
    """Options of the ``ompq`` strategy."""

    rounding: str = field(
        default="fit",
        metadata={
            "help": "fit (OMPQ's DFS_bit: floor or ceiling per layer, spending the most budget "
            "that fits) or nearest (np.around, OMPQ's default for other networks)"
        },
    )
    budgets: int = field(default=16, metadata={"help": "budget values in the Pareto sweep"})
    cost: str | None = field(
        default=None,
        metadata={
            "help": "cost the sweep varies "
            "(default: the first constraint, else the first cost objective)"
        },
    )


class Ladder:
    """Each tie class's weight widths, the candidate behind each, and their exact costs.

    An allocation is a *position* per class: an index into that class's ``widths``.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        damage = problem.class_table(problem.sensitivity_table())
        self.widths: list[np.ndarray] = []
        self.index: list[np.ndarray] = []
        slopes = []
        for g, members in enumerate(problem.tie_classes):
            choices = problem.choices[members[0]]
            widest_activation: dict[int, int] = {}
            for k, (w, a, *_) in enumerate(choices):
                if w not in widest_activation or a > choices[widest_activation[w]][1]:
                    widest_activation[w] = k
            widths = np.array(sorted(widest_activation), dtype=float)
            self.widths.append(widths)
            self.index.append(np.array([widest_activation[int(w)] for w in widths]))
            slopes.append(_slope(widths, -damage[g, self.index[-1]]))
        self.importance = np.array(slopes)
        """Per class, the error saved per weight bit (the LP's objective coefficients)."""
        self.low = np.array([w[0] for w in self.widths])
        self.high = np.array([w[-1] for w in self.widths])
        self.top = np.array([len(w) - 1 for w in self.widths])
        """Per class, the position of its widest width."""
        self._costs = {name: self._class_costs(name) for name in problem.costs}

    def _class_costs(self, name: str) -> list[np.ndarray]:
        table = self.problem.class_table(self.problem.cost_table(name))
        return [table[g, ks] for g, ks in enumerate(self.index)]

    def cost(self, name: str, g: int, position: int) -> float:
        """Class ``g``'s exact cost ``name`` at one ladder position."""
        return float(self._costs[name][g][position])

    def total(self, name: str, positions: np.ndarray) -> float:
        """Exact total of cost ``name`` (fixed part included)."""
        used = sum(self.cost(name, g, int(p)) for g, p in enumerate(positions))
        return used + self.problem.fixed_costs[name]

    def fits(self, positions: np.ndarray, limits: Mapping[str, float]) -> bool:
        return all(
            self.total(name, positions) <= limit + FEASIBILITY_RTOL * max(abs(limit), 1.0)
            for name, limit in limits.items()
        )

    def chord(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Per class, the cost at its lowest width and the cost per bit up to its widest."""
        at_low = np.array([c[0] for c in self._costs[name]])
        at_high = np.array([c[-1] for c in self._costs[name]])
        span = self.high - self.low
        per_bit = np.divide(at_high - at_low, span, out=np.zeros_like(span), where=span > 0)
        return at_low, per_bit

    def config(self, positions: np.ndarray) -> Config:
        """The configuration of an allocation."""
        genes = [int(ks[p]) for ks, p in zip(self.index, positions, strict=True)]
        return self.problem.expand(np.array(genes, dtype=np.int64))


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` over ``x`` (0 for a single point)."""
    if len(x) < 2:
        return 0.0
    centred = x - x.mean()
    return float(centred @ (y - y.mean()) / (centred @ centred))


def relaxed_bits(
    importance: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    per_bit: np.ndarray,
    room: np.ndarray,
) -> np.ndarray | None:
    """OMPQ's LP: ``max Σ importance·b`` s.t. ``per_bit @ (b − low) ≤ room``, ``low ≤ b ≤ high``.

    ``per_bit`` is ``(M, G)`` (one row per constraint), ``room`` the ``(M,)`` budget left above the
    all-lowest allocation. None when even that does not fit.
    """
    if np.any(room < -FEASIBILITY_RTOL * np.maximum(np.abs(room), 1.0)):
        return None
    if per_bit.shape[0] == 0:
        return np.where(importance > 0, high, low).astype(float)
    result = linprog(
        -importance,
        A_ub=per_bit,
        b_ub=np.maximum(room, 0.0) + per_bit @ low,
        bounds=list(zip(low, high, strict=True)),
        method="highs",
    )
    if result.status != 0:  # pragma: no cover - the all-low point is feasible, so is the LP
        raise SearchError(f"ompq: the linear program failed ({result.message})")
    return np.clip(result.x, low, high)


class Allocator:
    """OMPQ's LP, rounding and budget repair on one problem, for any set of limits."""

    def __init__(self, problem: Problem, rounding: str) -> None:
        if rounding not in ROUNDINGS:
            raise SearchError(
                f"ompq rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}"
            )
        self.rounding = rounding
        self.ladder = Ladder(problem)
        self.fixed = problem.fixed_costs

    def relaxed(self, limits: Mapping[str, float]) -> np.ndarray | None:
        """The LP's continuous weight bits per class under ``limits`` (chord costs)."""
        ladder = self.ladder
        chords = [ladder.chord(name) for name in limits]
        per_bit = np.array([c[1] for c in chords]).reshape(len(chords), len(ladder.low))
        room = np.array(
            [
                limit - self.fixed[n] - c[0].sum()
                for (n, limit), c in zip(limits.items(), chords, strict=True)
            ]
        )
        return relaxed_bits(ladder.importance, ladder.low, ladder.high, per_bit, room)

    def allocate(self, limits: Mapping[str, float]) -> np.ndarray | None:
        """Ladder positions meeting ``limits``; None if the all-lowest ladder misses them."""
        relaxed = self.relaxed(limits)
        if relaxed is None:
            return None
        floor = np.array(
            [
                np.flatnonzero(w <= b + 1e-9)[-1]
                for w, b in zip(self.ladder.widths, relaxed, strict=True)
            ]
        )
        ceiling = np.array(
            [
                np.flatnonzero(w >= b - 1e-9)[0]
                for w, b in zip(self.ladder.widths, relaxed, strict=True)
            ]
        )
        if self.rounding == "fit" and limits:
            positions = self._fit(floor, ceiling, limits)
        else:  # np.around on the ladder: the nearer width, ties to the wider
            below = np.array([w[p] for w, p in zip(self.ladder.widths, floor, strict=True)])
            above = np.array([w[p] for w, p in zip(self.ladder.widths, ceiling, strict=True)])
            positions = np.where(above - relaxed <= relaxed - below, ceiling, floor)
        return self._repair(positions, limits)

    def _fit(
        self, floor: np.ndarray, ceiling: np.ndarray, limits: Mapping[str, float]
    ) -> np.ndarray:
        """OMPQ's ``DFS_bit``: floor or ceiling per class, spending the most of the first limit
        while meeting every limit (a 0-1 program, solved exactly by HiGHS)."""
        ladder = self.ladder
        open_ = np.flatnonzero(ceiling > floor)
        if len(open_) == 0:
            return floor
        rows, upper = [], []
        for name, limit in limits.items():
            rows.append(
                [ladder.cost(name, g, ceiling[g]) - ladder.cost(name, g, floor[g]) for g in open_]
            )
            upper.append(
                limit + FEASIBILITY_RTOL * max(abs(limit), 1.0) - ladder.total(name, floor)
            )
        if min(upper) < 0:
            return floor  # even the floor misses a limit: the repair lowers further
        result = milp(
            -np.array(rows[0]),
            constraints=LinearConstraint(np.array(rows), -np.inf, np.array(upper)),
            integrality=np.ones(len(open_)),
            bounds=Bounds(0, 1),
        )
        positions = floor.copy()
        if result.status == 0:
            positions[open_] = np.where(np.round(result.x) == 1, ceiling[open_], floor[open_])
        return positions

    def _repair(self, positions: np.ndarray, limits: Mapping[str, float]) -> np.ndarray | None:
        """Lower, one ladder step at a time, the class losing the least importance per unit of
        (limit-normalized) cost saved, until every limit is met; None if nothing is left."""
        ladder = self.ladder
        positions = positions.copy()
        while not ladder.fits(positions, limits):
            best: tuple[float, int] | None = None
            for g, p in enumerate(positions):
                if p == 0:
                    continue
                saved = sum(
                    (ladder.cost(n, g, p) - ladder.cost(n, g, p - 1)) / max(abs(limit), 1e-300)
                    for n, limit in limits.items()
                )
                if saved > 0:
                    lost = ladder.importance[g] * (ladder.widths[g][p] - ladder.widths[g][p - 1])
                    best = min(best or (np.inf, g), (lost / saved, g))
            if best is None:
                return None
            positions[best[1]] -= 1
        return positions


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """OMPQ's allocation over a budget sweep (``rng`` unused: the method is deterministic)."""
    if options.budgets < 2:
        raise SearchError("ompq needs budgets >= 2")
    allocator = Allocator(problem, options.rounding)
    ladder = allocator.ladder
    swept = swept_objective(problem, options.cost)
    others = {k: v for k, v in problem.constraints.items() if k != swept}
    low, high = ladder.total(swept, np.zeros_like(ladder.top)), ladder.total(swept, ladder.top)
    limits = set(np.linspace(low, max(high, low), options.budgets).tolist())
    if swept in problem.constraints:
        limits.add(problem.constraints[swept])
    configs = []
    for limit in sorted(limits):
        positions = allocator.allocate({**others, swept: limit})
        if positions is not None:
            configs.append(ladder.config(positions))
    answer = allocator.allocate(dict(problem.constraints))
    if answer is None:
        raise SearchError(
            "ompq allocates weight bits with each layer's widest activations, and no such "
            "allocation meets the constraints; lower activation widths need another strategy "
            "(ilp)"
        )
    configs.append(ladder.config(answer))
    uniform = evaluate_uniform(problem, evaluator)
    candidates = evaluate_points(problem, evaluator, configs)
    notes = [
        f"OMPQ linear program over {len(ladder.low)} layers' weight bits, {options.rounding} "
        f"rounding, swept over {swept}; activations at each layer's widest"
    ]
    result = make_result("ompq", problem, candidates, uniform, evaluator.calls, notes)
    return dataclasses.replace(result, chosen=candidates[-1])
