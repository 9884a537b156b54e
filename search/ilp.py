"""``ilp``: HAWQ-V3's integer program, exact for additive objectives (METHODS §7).

One binary ``z[g, k]`` per tie class ``g`` and candidate ``k``; exactly one per class
(``Σ_k z[g, k] = 1``), every constraint as ``Σ z · cost ≤ limit − fixed``, objective
``Σ z · sensitivity``. Working on tie classes rather than layers makes the HAWQ-V3
"tied layers take equal bits" rows unnecessary: a class *is* one decision. The model is a
multiple-choice knapsack. `OneHotModel` solves it exactly: HiGHS (``scipy.optimize.milp``)
for several constraints, a Lagrangian-bounded dynamic program for one (see its docstring for
why; timings in bench/RESULTS.md §3b).

The Pareto front comes from a budget sweep: the first constraint's objective (else the first
cost objective) is bounded by ``budgets`` values spaced evenly between its cheapest reachable
total and its all-safest total, plus the user's own limit, with every other constraint kept.
Each optimum is one candidate; with an exact evaluator only these few candidates are evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from mpqc.search.evaluate import Evaluator, evaluate_points, evaluate_uniform
from mpqc.search.pareto import SearchResult, make_result
from mpqc.search.problem import ERROR, FEASIBILITY_RTOL, Config, Problem, SearchError


class OneHotModel:
    """The multiple-choice model of a problem over its tie classes, built once, solved often.

    HiGHS solves the general model (any number of constraints). With a single constraint —
    the budget sweep, EAGL's knapsack — handing HiGHS the whole model is slow per budget at
    500 layers × 12 choices (bench/RESULTS.md §3b), so `solve` first bounds the problem (see
    `_Bound`): the Lagrangian relaxation gives a dual bound ``LB``, a feasible incumbent
    ``UB`` and each choice's reduced cost ``r``; any configuration costs at least
    ``LB + Σ r``. An exact dynamic program over (cost, error) Pareto states then only follows
    partial configurations with ``Σ r ≤ UB − LB``, which is a few thousand states instead of
    ``12^500``. If a pathological instance still blows the state limit, HiGHS gets the
    residual problem with every provably useless choice (``r > UB − LB``) removed. All three
    routes are exact.
    """

    def __init__(
        self,
        problem: Problem,
        time_limit: float = 10.0,
        mip_gap: float = 0.0,
        max_states: int = 5_000,
    ) -> None:
        self.problem = problem
        self.options = {"time_limit": time_limit, "mip_rel_gap": mip_gap}
        self.max_states = max_states
        width = int(problem.class_choices.max())
        self._valid = np.arange(width)[None, :] < problem.class_choices[:, None]  # (G, Kmax)
        self._cost_tables: dict[str, np.ndarray] = {}
        self._last_hulls: tuple[tuple[str, bytes], _Hulls] | None = None

    def class_table(self, table: np.ndarray) -> np.ndarray:
        """See `Problem.class_table`."""
        return self.problem.class_table(table)

    def _class_costs(self, name: str) -> np.ndarray:
        if name not in self._cost_tables:
            self._cost_tables[name] = self.class_table(self.problem.cost_table(name))
        return self._cost_tables[name]

    def _hulls(self, w: np.ndarray, name: str) -> _Hulls:
        """Hulls of ``w`` against cost ``name``; the last ones are kept for budget sweeps."""
        key = (name, w.tobytes())
        if self._last_hulls is None or self._last_hulls[0] != key:
            self._last_hulls = (key, _Hulls(w, self._class_costs(name)))
        return self._last_hulls[1]

    def solve(self, weights: np.ndarray, limits: Mapping[str, float]) -> Config | None:
        """Minimize ``Σ weights[l, x_l]`` subject to ``total(obj) ≤ limit``; None if infeasible.

        ``weights`` is an ``(L, Kmax)`` table (entries beyond a layer's candidates are ignored).
        """
        problem = self.problem
        w = self.class_table(weights)
        rows = {name: self._class_costs(name) for name in limits}
        budgets = {
            name: _with_slack(limit - problem.fixed_costs[name]) for name, limit in limits.items()
        }
        for name, c in rows.items():  # one constraint alone out of reach: nothing can fix it
            if np.min(c, axis=1).sum() > budgets[name]:
                return None
        if not limits:
            return problem.expand(np.argmin(w, axis=1))
        keep = self._valid
        if len(limits) == 1:
            ((name, c),) = rows.items()
            bound = _Bound(self._hulls(w, name), budgets[name])
            genes = bound.dynamic_program(self.max_states)
            if genes is not None:
                return problem.expand(genes)
            keep = bound.useful()
        genes = self._milp(w, rows, budgets, keep)
        return None if genes is None else problem.expand(genes)

    def _milp(
        self,
        w: np.ndarray,
        rows: Mapping[str, np.ndarray],
        budgets: Mapping[str, float],
        keep: np.ndarray,
    ) -> np.ndarray | None:
        """HiGHS on the choices in ``keep``; classes with one kept choice are constants."""
        genes = np.argmax(keep, axis=1)
        free = keep.sum(axis=1) > 1
        var_class, var_choice = np.nonzero(keep & free[:, None])
        n_vars = len(var_class)
        if n_vars == 0:  # nothing left to decide: the only candidate fits or not
            fits = all(
                c[np.arange(len(genes)), genes].sum() <= budgets[name] for name, c in rows.items()
            )
            return genes if fits else None
        classes = np.flatnonzero(free)
        position = np.full(len(keep), -1)
        position[classes] = np.arange(len(classes))
        objective = w[var_class, var_choice] - np.min(np.where(keep, w, np.inf), axis=1)[var_class]
        objective = objective / (float(objective.max(initial=0.0)) or 1.0)
        constraints = [
            LinearConstraint(
                csr_array(
                    (np.ones(n_vars), (position[var_class], np.arange(n_vars))),
                    shape=(len(classes), n_vars),
                ),
                1.0,
                1.0,
            )
        ]
        for name, c in rows.items():
            row = c[var_class, var_choice]
            rhs = budgets[name] - c[~free, genes[~free]].sum()
            norm = max(abs(rhs), float(np.abs(row).max(initial=0.0)), 1e-300)
            constraints.append(
                LinearConstraint(
                    row[None, :] / norm, -np.inf, rhs / norm - _HIGHS_FEASIBILITY_TOLERANCE
                )
            )
        result = milp(
            objective,
            integrality=np.ones(n_vars),
            bounds=Bounds(0.0, 1.0),
            constraints=constraints,
            options=self.options,
        )
        if result.status == 2:
            return None
        if result.x is None:
            raise SearchError(f"the ILP solver stopped without a solution: {result.message}")
        chosen = np.round(result.x).astype(bool)
        genes[var_class[chosen]] = var_choice[chosen]
        return genes


_HIGHS_FEASIBILITY_TOLERANCE = 1e-6
"""HiGHS accepts rows violated by up to its MIP feasibility tolerance (1e-6 on our normalized
rows); the right-hand side is tightened by as much so that every answer truly fits."""


def _with_slack(budget: float) -> float:
    """The budget widened by the feasibility tolerance `Problem.feasible` also grants."""
    return budget + FEASIBILITY_RTOL * max(abs(budget), 1.0)


class _Hulls:
    """Per class, the lower convex hull of its (cost, error) choices, as segments sorted by
    slope: the exact Lagrangian (= LP) solution of ``min Σw s.t. Σc ≤ budget`` for *any*
    budget is a prefix of this list, so a budget sweep pays for the hulls once.

    Each class starts at its lowest-error choice (ties: lower cost); a segment moves it to a
    cheaper hull vertex at ``λ = Δerror / Δcost`` error per unit of cost saved.
    """

    def __init__(self, w: np.ndarray, c: np.ndarray) -> None:
        self.w, self.c = w, c
        self.start = _argmin_ties(w, c)
        segments = []  # (λ, class, to, cost saved, error added)
        for g in range(len(w)):
            current = int(self.start[g])
            while True:
                cheaper = np.flatnonzero(c[g] < c[g, current])
                if not len(cheaper):
                    break
                slope = (w[g, cheaper] - w[g, current]) / (c[g, current] - c[g, cheaper])
                best = cheaper[slope <= slope.min()]
                nxt = int(best[np.argmin(c[g, best])])
                segments.append(
                    (
                        float(slope.min()),
                        g,
                        nxt,
                        c[g, current] - c[g, nxt],
                        w[g, nxt] - w[g, current],
                    )
                )
                current = nxt
        segments.sort(key=lambda s: (s[0], s[1]))
        table = np.array(segments, dtype=float).reshape(len(segments), 5)
        self.lam, self.saved, self.added = table[:, 0], table[:, 3], table[:, 4]
        self.seg_class, self.seg_to = table[:, 1].astype(np.int64), table[:, 2].astype(np.int64)
        rows = np.arange(len(w))
        self.start_cost = float(c[rows, self.start].sum())
        self.start_error = float(w[rows, self.start].sum())
        self.cost_after = self.start_cost - np.cumsum(self.saved)  # after segments 0..j
        self.error_after = self.start_error + np.cumsum(self.added)

    def prefix(self, n: int) -> np.ndarray:
        """The configuration after applying the first ``n`` segments."""
        genes = self.start.copy()
        last = np.full(len(genes), -1)
        np.maximum.at(last, self.seg_class[:n], np.arange(n))
        moved = last >= 0
        genes[moved] = self.seg_to[last[moved]]
        return genes


def _argmin_ties(value: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per row, the argmin of ``value``; ties (to rounding) go to the lower ``cost``."""
    best = value.min(axis=1, keepdims=True)
    ties = value <= best + 1e-12 * np.maximum(np.abs(best), 1e-300)
    return np.argmin(np.where(ties, cost, np.inf), axis=1)


class _TooManyStates(Exception):
    """The dynamic program outgrew its state limit; HiGHS takes over."""


class _Bound:
    """Lagrangian bound of ``min Σ w[g, x_g]  s.t.  Σ c[g, x_g] ≤ budget`` (``(G, K)`` tables,
    +inf where a class has no such choice; the all-cheapest configuration meets the budget).

    For any ``λ ≥ 0`` and feasible ``x``: ``Σ w(x) ≥ LB(λ) + Σ r_λ(x)`` with
    ``LB(λ) = Σ_g min_k (w + λc) − λ·budget`` and ``r_λ = w + λc − min_k(w + λc) ≥ 0``.
    ``λ`` is the LP multiplier read off the hulls (the best ``LB``), and the incumbent is the
    Lagrangian minimizer that fits, improved by every move that still fits the budget.
    """

    def __init__(self, hulls: _Hulls, budget: float) -> None:
        self.w, self.c, self.budget = hulls.w, hulls.c, budget
        if hulls.start_cost <= budget:  # the budget does not bind
            n, self.lam, self.lower = 0, 0.0, hulls.start_error
        else:  # LP: n−1 segments, then a fraction of one
            n = int(np.searchsorted(-hulls.cost_after, -budget)) + 1
            cost = hulls.cost_after[n - 2] if n >= 2 else hulls.start_cost
            error = hulls.error_after[n - 2] if n >= 2 else hulls.start_error
            fraction = (cost - budget) / hulls.saved[n - 1]
            self.lam = float(hulls.lam[n - 1])
            self.lower = float(error + fraction * hulls.added[n - 1])
        self.incumbent = self._fill(hulls.prefix(n))
        self.upper = float(self.w[self._rows, self.incumbent].sum())
        # Padded (absent) choices cost +inf; keep them at +inf rather than 0 * inf = nan when λ = 0.
        with np.errstate(invalid="ignore"):
            value = np.where(np.isfinite(self.c), self.w + self.lam * self.c, np.inf)
        self.reduced = value - value.min(axis=1, keepdims=True)
        self._tolerance = 1e-9 * (abs(self.upper) + abs(self.lower) + 1.0)
        self.gap = self.upper - self.lower + self._tolerance

    @property
    def _rows(self) -> np.ndarray:
        return np.arange(len(self.w))

    def _cost(self, x: np.ndarray) -> float:
        return float(self.c[self._rows, x].sum())

    def _fill(self, x: np.ndarray) -> np.ndarray:
        """Apply the single-class moves that still fit the budget, biggest gain first."""
        rows, w, c = self._rows, self.w, self.c
        x = x.copy()
        while True:
            spare = self.budget - self._cost(x)
            gain = w[rows, x][:, None] - w
            fits = (c - c[rows, x][:, None] <= spare) & np.isfinite(w) & (gain > 0)
            if not fits.any():
                return x
            row, choice = np.unravel_index(np.argmax(np.where(fits, gain, -np.inf)), w.shape)
            x[row] = choice

    def useful(self, limit: float | None = None) -> np.ndarray:
        """Mask of the choices whose reduced cost is within ``limit`` (default: the gap), i.e.
        that can belong to a configuration better than ``LB + limit``; the incumbent's stay."""
        limit = self.gap if limit is None else limit
        keep = np.isfinite(self.w) & (self.reduced <= limit)
        keep[self._rows, self.incumbent] = True
        return keep

    def dynamic_program(self, max_states: int) -> np.ndarray | None:
        """The exact optimum, or None when more than ``max_states`` states would be needed.

        The incumbent is usually far looser than the optimum, so the search deepens: it looks
        only at configurations with ``Σ r ≤ limit`` for a small ``limit`` first. The best one
        found tightens the incumbent ``UB``, which is optimal once ``UB ≤ LB + limit``
        (anything outside costs more); otherwise the limit grows fourfold, never past the
        gap ``UB − LB``, where the pass is exact by construction.
        """
        limit = self.gap / 1024.0
        while True:
            try:
                genes = self._staircase(limit, max_states)
            except _TooManyStates:
                return None
            if genes is not None:
                value = float(self.w[self._rows, genes].sum())
                if value < self.upper:
                    self.incumbent, self.upper = genes, value
                    self.gap = self.upper - self.lower + self._tolerance
            if self.upper <= self.lower + limit or limit >= self.gap:
                return self.incumbent
            limit = min(4.0 * limit, self.gap)

    def _staircase(self, limit: float, max_states: int) -> np.ndarray | None:
        """Best configuration with ``Σ r ≤ limit``, None if there is none.

        States are partial configurations over the classes with more than one useful choice,
        kept as a Pareto staircase in (cost, error): a state dominated in both can never
        complete better.
        """
        keep = self.useful(limit)
        free = np.flatnonzero(keep.sum(axis=1) > 1)
        kept_costs = np.where(keep, self.c, np.nan)[free]
        spread = np.nanmax(kept_costs, axis=1) - np.nanmin(kept_costs, axis=1)
        free = free[np.argsort(spread, kind="stable")]  # small moves first: fewer states
        genes = np.argmax(keep, axis=1)
        fixed = np.ones(len(genes), dtype=bool)
        fixed[free] = False
        cost = np.array([self.c[fixed, genes[fixed]].sum()])
        error = np.array([self.w[fixed, genes[fixed]].sum()])
        slack = np.array([self.reduced[fixed, genes[fixed]].sum()])
        cheapest_rest = np.concatenate(
            [np.cumsum(np.min(np.where(keep, self.c, np.inf)[free], axis=1)[::-1])[::-1], [0.0]]
        )
        trail: list[tuple[np.ndarray, np.ndarray]] = []
        for step, g in enumerate(free):
            choices = np.flatnonzero(keep[g])
            cost = (cost[:, None] + self.c[g, choices]).ravel()
            error = (error[:, None] + self.w[g, choices]).ravel()
            slack = (slack[:, None] + self.reduced[g, choices]).ravel()
            parent = np.repeat(np.arange(len(cost) // len(choices)), len(choices))
            picked = np.tile(choices, len(cost) // len(choices))
            alive = (cost + cheapest_rest[step + 1] <= self.budget) & (slack <= limit)
            order = np.flatnonzero(alive)[np.lexsort((error[alive], cost[alive]))]
            staircase = order[
                error[order] < np.minimum.accumulate(np.concatenate([[np.inf], error[order][:-1]]))
            ]
            if len(staircase) > max_states:
                raise _TooManyStates
            if len(staircase) == 0:
                return None
            cost, error, slack = cost[staircase], error[staircase], slack[staircase]
            trail.append((parent[staircase], picked[staircase]))
        state = int(np.argmin(error))
        for g, (parent, picked) in zip(free[::-1], trail[::-1], strict=True):
            genes[g] = picked[state]
            state = int(parent[state])
        return genes


def solve(problem: Problem, weights: np.ndarray, limits: Mapping[str, float]) -> Config | None:
    """One-shot `OneHotModel.solve`."""
    return OneHotModel(problem).solve(weights, limits)


def swept_objective(problem: Problem, requested: str | None = None) -> str:
    """The cost whose budget a sweep varies: the requested one, the first constraint, else the
    first cost objective, else the first cost."""
    if requested is not None:
        if requested not in problem.costs:
            raise SearchError(f"cannot sweep {requested!r}; costs are {sorted(problem.costs)}")
        return requested
    for name in (*problem.constraints, *problem.objectives, *problem.costs):
        if name in problem.costs:
            return name
    raise SearchError("the problem has no cost table to sweep a budget over")


def budget_sweep(
    problem: Problem, model: OneHotModel, weights: np.ndarray, objective: str, budgets: int
) -> list[Config]:
    """Optima of ``weights`` for ``budgets`` limits on ``objective`` (plus the user's limit)."""
    others = {k: v for k, v in problem.constraints.items() if k != objective}
    cheapest = model.solve(problem.cost_table(objective), others)
    if cheapest is None:
        return []
    low = problem.total(objective, cheapest)
    high = problem.total(objective, problem.safest())
    limits = list(np.linspace(low, max(high, low), budgets))
    if objective in problem.constraints:
        limits.append(problem.constraints[objective])
    configs = []
    for limit in sorted(set(limits)):
        config = model.solve(weights, {**others, objective: limit})
        if config is not None:
            configs.append(config)
    return configs


@dataclass(frozen=True)
class Options:
    """Options of the ``ilp`` strategy."""

    budgets: int = field(default=16, metadata={"help": "budget values in the Pareto sweep"})
    sweep: str | None = field(
        default=None,
        metadata={
            "help": "cost to sweep (default: the first constraint, else the first cost objective)"
        },
    )
    time_limit: float = field(default=10.0, metadata={"help": "seconds per ILP solve"})
    mip_gap: float = field(
        default=0.0,
        metadata={"help": "relative optimality gap accepted by HiGHS (0 = proven optimal)"},
    )


def search(
    problem: Problem, evaluator: Evaluator, options: Options, rng: np.random.Generator
) -> SearchResult:
    """Budget-swept ILP optima of the sensitivity proxy (``rng`` unused: the ILP is exact)."""
    if options.budgets < 2:
        raise SearchError(f"ilp needs budgets >= 2, got {options.budgets}")
    model = OneHotModel(problem, options.time_limit, options.mip_gap)
    objective = swept_objective(problem, options.sweep)
    configs = budget_sweep(problem, model, problem.sensitivity_table(), objective, options.budgets)
    uniform = evaluate_uniform(problem, evaluator)
    candidates = evaluate_points(problem, evaluator, configs)
    notes = [f"sensitivity minimized under {len(configs)} budgets on {objective}"]
    if ERROR in problem.objectives and evaluator.exact:
        notes.append("front errors are exact evaluations of the ILP optima")
    return make_result("ilp", problem, candidates, uniform, evaluator.calls, notes)
