"""greedy (AIMET AMP): flip order, monotone curve, binary search == linear scan."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest

import mpqc.search as search
from mpqc.search.greedy import flip_order, longest_within, pareto_curve
from mpqc.search.problem import Problem
from mpqc.search.synthetic import synthetic_problem

PAIRS = ((8, 8), (6, 8), (4, 8), (4, 4), (2, 8))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_prefix_curve_is_monotone_in_bops(seed: int, reverse: bool) -> None:
    problem = synthetic_problem(25, PAIRS, seed=seed, groups=((2, 9),))
    curve = pareto_curve(problem, "bops", reverse)
    bops = [problem.total("bops", c) for c in curve]
    assert all(a > b for a, b in pairwise(bops))
    np.testing.assert_array_equal(curve[0], problem.safest())
    table = problem.cost_table("bops")
    assert bops[-1] == pytest.approx(table.min(axis=1).sum() + problem.fixed_costs["bops"])
    for config in curve:
        problem.validate(config)


def test_flip_order_follows_damage_per_cost_with_aimet_tie_rules() -> None:
    # layer 1 and 2 identical: the tie goes to the higher bit sum, then graph order
    problem = Problem(
        layers=("a", "b", "c"),
        choices=(((8, 8), (4, 8)), ((8, 8), (4, 8), (4, 4)), ((8, 8), (4, 8), (4, 4))),
        costs={"bops": ((64.0, 32.0), (64.0, 32.0, 16.0), (64.0, 32.0, 16.0))},
        fixed_costs={},
        sensitivity=((0.0, 8.0), (0.0, 1.0, 2.0), (0.0, 1.0, 2.0)),
        constraints={},
        objectives=("error", "bops"),
    )
    # slopes: a→4/8: 8/32; b,c→(4,8): 1/32; b,c→(4,4): 2/48
    assert flip_order(problem, "bops") == [(1, 1), (2, 1), (1, 2), (2, 2), (0, 1)]


def monotone_evaluator(problem: Problem) -> search.Evaluator:
    return search.Evaluator(lambda config: float(problem.proxy_error(np.array(config))))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_binary_search_equals_linear_scan(seed: int, reverse: bool) -> None:
    problem = synthetic_problem(30, PAIRS[:3], seed=seed, size_ratio=1.5)
    drop = float(np.random.default_rng(seed).uniform(1, 200))
    curve = pareto_curve(problem, "size", reverse)
    errors = [problem.proxy_error(c) for c in curve]
    if reverse and any(a > b for a, b in pairwise(errors)):
        pytest.skip("reverse curve of this instance is not monotone in error")
    results = {}
    for probe in ("binary", "linear"):
        evaluator = monotone_evaluator(problem)
        results[probe] = search.run(
            problem, "greedy", evaluator=evaluator, allowed_drop=drop, probe=probe, reverse=reverse
        )
    assert results["binary"].chosen == results["linear"].chosen
    chosen = results["binary"].chosen
    assert chosen.objectives["error"] <= errors[0] + drop
    later = [
        e
        for c, e in zip(curve, errors, strict=True)
        if problem.total("size", c) < chosen.objectives["size"]
    ]
    assert all(e > errors[0] + drop for e in later)


def test_longest_within_uses_logarithmic_calls() -> None:
    values = np.sort(np.random.default_rng(0).uniform(0, 1, 1000))
    calls = []

    def errors_of(i: int) -> float:
        calls.append(i)
        return float(values[i])

    assert longest_within(errors_of, 1000, 0.5, "binary") == int(np.sum(values <= 0.5)) - 1
    assert len(calls) <= math.ceil(math.log2(1000)) + 1


def test_constraints_pick_the_cheapest_feasible_prefix() -> None:
    problem = synthetic_problem(20, PAIRS[:3], seed=3, size_ratio=0.7)
    result = search.run(problem, "greedy")
    curve = pareto_curve(problem, "size")
    feasible = [c for c in curve if problem.feasible(c)]
    assert result.chosen.config == tuple(feasible[0])
    assert result.evaluations == 0


def test_bad_probe_is_rejected() -> None:
    with pytest.raises(search.SearchError, match="probe"):
        search.run(synthetic_problem(3), "greedy", probe="ternary")
