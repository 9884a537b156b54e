"""nsga2 (MOHAQ's NSGA-II): reaches the true front, seeds the uniform points, respects ties."""

from __future__ import annotations

import numpy as np
import pytest
from search_brute import exhaustive_front

import mpqc.search as search
from mpqc.search import hypervolume
from mpqc.search.nsga2 import initial_population
from mpqc.search.pareto import objective_matrix
from mpqc.search.synthetic import synthetic_problem

PAIRS = ((8, 8), (6, 8), (4, 8), (2, 8))


@pytest.mark.parametrize("seed", range(3))
def test_front_reaches_95_percent_of_the_exhaustive_hypervolume(seed: int) -> None:
    problem = synthetic_problem(6, PAIRS, seed=seed)  # 4^6 configurations
    truth = exhaustive_front(problem)
    matrix = objective_matrix(truth, problem.objectives)
    ref = matrix.max(axis=0) + 0.1 * np.ptp(matrix, axis=0)
    result = search.run(problem, "nsga2", seed=seed)  # default budget
    assert hypervolume(result.front, problem.objectives, ref) >= 0.95 * hypervolume(
        truth, problem.objectives, ref
    )


def test_uniform_points_are_seeded_into_the_first_population() -> None:
    problem = synthetic_problem(7, PAIRS, seed=1, groups=((1, 2),))
    population = initial_population(problem, 40, np.random.default_rng(0))
    assert population.shape == (40, 6)
    rows = {tuple(row) for row in population.tolist()}
    assert len(rows) == 40
    for config in problem.uniform_configs().values():
        assert tuple(problem.compress(config).tolist()) in rows


def test_small_spaces_fill_the_population_with_every_configuration() -> None:
    problem = synthetic_problem(2, PAIRS[:2])
    assert len(initial_population(problem, 40, np.random.default_rng(0))) == 4


def test_constraints_and_ties_hold_for_the_chosen_point() -> None:
    problem = synthetic_problem(12, PAIRS, seed=3, size_ratio=0.5, groups=((0, 11), (4, 5)))
    result = search.run(problem, "nsga2", generations=20)
    chosen = np.array(result.chosen.config)
    assert problem.feasible(chosen)
    problem.validate(chosen)
    for point in result.front:
        problem.validate(np.array(point.config))


def test_three_objectives() -> None:
    problem = synthetic_problem(6, PAIRS, seed=2, objectives=("error", "size", "latency"))
    result = search.run(problem, "nsga2", generations=10)
    assert all(set(p.objectives) == {"error", "size", "latency"} for p in result.front)


def test_different_seeds_explore_differently() -> None:
    problem = synthetic_problem(20, PAIRS, seed=2)
    fronts = {search.run(problem, "nsga2", seed=s, generations=5).front for s in range(3)}
    assert len(fronts) > 1
