"""ilp (HAWQ-V3): exact against brute force, monotone in the budget, all solver routes agree."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from search_brute import all_configs, best_proxy, feasible_mask

import mpqc.search as search
from mpqc.search.ilp import OneHotModel
from mpqc.search.problem import Problem
from mpqc.search.synthetic import synthetic_problem

PAIRS = ((8, 8), (6, 8), (4, 8), (4, 4), (2, 8))


def random_instance(seed: int) -> Problem:
    """L ≤ 12 layers, 2-4 candidates, sometimes a tie and a second constraint."""
    rng = np.random.default_rng(seed)
    n_choices = int(rng.integers(2, 5))
    n_layers = int(rng.integers(3, {2: 13, 3: 9, 4: 7}[n_choices]))
    groups = ((0, n_layers - 1),) if seed % 3 == 0 else ()
    problem = synthetic_problem(
        n_layers,
        PAIRS[:n_choices],
        seed=seed,
        groups=groups,
        size_ratio=float(rng.uniform(0.35, 1.0)),
    )
    if seed % 2:
        limits = dict(problem.constraints)
        latency = problem.total("latency", problem.safest())
        limits["latency"] = float(latency * rng.uniform(0.5, 1.0))
        problem = Problem(**{**_fields(problem), "constraints": limits})
    return problem


def _fields(problem: Problem) -> dict:
    names = (
        "layers",
        "choices",
        "costs",
        "fixed_costs",
        "sensitivity",
        "constraints",
        "objectives",
        "features",
        "edges",
        "groups",
    )
    return {name: getattr(problem, name) for name in names}


@pytest.mark.parametrize("seed", range(40))
def test_ilp_equals_brute_force(seed: int) -> None:
    problem = random_instance(seed)
    configs = all_configs(problem)
    if not feasible_mask(problem, configs).any():
        with pytest.raises(search.InfeasibleError):
            problem.check_feasible()
        return
    for max_states in (5_000, 0):  # the Pareto DP route and the HiGHS route
        model = OneHotModel(problem, max_states=max_states)
        config = model.solve(problem.sensitivity_table(), problem.constraints)
        assert problem.feasible(config)
        assert problem.proxy_error(config) == pytest.approx(
            best_proxy(problem), rel=1e-9, abs=1e-12
        )
        problem.validate(config)  # ties respected


@pytest.mark.parametrize("seed", range(5))
def test_optimum_never_worsens_as_the_budget_loosens(seed: int) -> None:
    problem = synthetic_problem(40, PAIRS, seed=seed)
    model = OneHotModel(problem)
    low = problem.total("size", problem.cheapest())
    high = problem.total("size", problem.safest())
    errors = [
        problem.proxy_error(model.solve(problem.sensitivity_table(), {"size": limit}))
        for limit in np.linspace(low, high, 25)
    ]
    assert all(a >= b - 1e-9 * max(a, 1.0) for a, b in pairwise(errors))
    assert errors[-1] == 0.0


def test_large_problem_routes_agree_and_fit() -> None:
    pairs = tuple((w, a) for w in (16, 8, 6, 4, 3, 2) for a in (8, 4))
    problem = synthetic_problem(300, pairs, seed=11, size_ratio=0.5)
    fast = OneHotModel(problem).solve(problem.sensitivity_table(), problem.constraints)
    highs = OneHotModel(problem, max_states=0).solve(
        problem.sensitivity_table(), problem.constraints
    )
    assert problem.feasible(fast) and problem.feasible(highs)
    assert problem.proxy_error(fast) <= problem.proxy_error(highs) * (1 + 1e-9)


def test_front_sweeps_the_budget_and_chooses_the_constrained_optimum() -> None:
    problem = synthetic_problem(8, PAIRS[:3], seed=2, size_ratio=0.6)
    result = search.run(problem, "ilp", budgets=8)
    sizes = [p.objectives["size"] for p in result.front]
    assert min(sizes) == pytest.approx(problem.total("size", problem.cheapest()))
    assert max(sizes) == pytest.approx(problem.total("size", problem.safest()))
    assert result.chosen.objectives["error"] == pytest.approx(best_proxy(problem))


def test_exact_evaluator_only_sees_the_ilp_optima_and_uniform_points() -> None:
    problem = synthetic_problem(8, PAIRS[:3], seed=2, size_ratio=0.6)
    evaluator = search.Evaluator(lambda config: float(problem.proxy_error(np.array(config))))
    result = search.run(problem, "ilp", evaluator=evaluator, budgets=8)
    assert result.evaluations == evaluator.calls <= 8 + 1 + 3
