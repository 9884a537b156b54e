"""eagl: the knapsack DP is exact on integer costs and safe (never over budget) otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from search_brute import best_proxy

import mpqc.search as search
from mpqc.search.eagl import knapsack
from mpqc.search.ilp import OneHotModel
from mpqc.search.problem import Problem
from mpqc.search.synthetic import synthetic_problem

PAIRS = ((8, 8), (4, 8), (2, 8))


def integer_instance(seed: int) -> Problem:
    """Up to 15 layers with integer sizes (bytes) and entropy-like scores."""
    rng = np.random.default_rng(seed)
    n_choices = 2 if seed % 2 else 3
    n_layers = 15 if n_choices == 2 else 9
    sizes = [np.sort(rng.integers(1, 60, n_choices))[::-1].astype(float) for _ in range(n_layers)]
    scores = [
        np.concatenate([[0.0], np.sort(rng.uniform(0, 8, n_choices - 1))]) for _ in range(n_layers)
    ]
    total_high = sum(s[0] for s in sizes)
    total_low = sum(s[-1] for s in sizes)
    limit = float(rng.integers(int(total_low), int(total_high) + 1))
    return Problem(
        layers=tuple(f"l{i}" for i in range(n_layers)),
        choices=tuple(PAIRS[:n_choices] for _ in range(n_layers)),
        costs={"size": tuple(sizes)},
        fixed_costs={"size": 7.0},
        sensitivity=tuple(scores),
        constraints={"size": limit + 7.0},
    )


@pytest.mark.parametrize("seed", range(16))
def test_knapsack_dp_equals_brute_force(seed: int) -> None:
    problem = integer_instance(seed)
    result = search.run(problem, "eagl")
    assert problem.feasible(np.array(result.chosen.config))
    assert result.chosen.objectives["error"] == pytest.approx(best_proxy(problem), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_dp_on_real_valued_costs_fits_and_loses_at_most_the_rounding(seed: int) -> None:
    problem = synthetic_problem(60, PAIRS, seed=seed, size_ratio=0.55)
    table, base, unit, _ = knapsack(problem, "size", 2048)
    limit = problem.constraints["size"]
    genes = table.solve(int(np.floor((limit - base) / unit)))
    config = problem.expand(genes)
    assert problem.feasible(config)
    # rounding costs each layer under one unit: the DP beats the exact optimum of a budget
    # that is len(layers) units tighter
    tighter = OneHotModel(problem).solve(
        problem.sensitivity_table(), {"size": limit - len(problem.layers) * unit}
    )
    assert problem.proxy_error(config) <= problem.proxy_error(tighter) + 1e-9


def test_several_constraints_go_through_the_ilp_solver() -> None:
    problem = synthetic_problem(8, PAIRS, seed=1, size_ratio=0.6)
    fields = {
        name: getattr(problem, name)
        for name in ("layers", "choices", "costs", "fixed_costs", "sensitivity")
    }
    latency = problem.total("latency", problem.safest())
    two = Problem(**fields, constraints={**problem.constraints, "latency": latency * 0.9})
    result = search.run(two, "eagl")
    assert "solved as an ILP" in result.notes[0]
    assert result.chosen.objectives["error"] == pytest.approx(best_proxy(two))
