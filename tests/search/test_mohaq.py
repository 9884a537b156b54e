"""mohaq: beacon estimates are exact at a beacon, never worse than plain, within budget."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import mpqc.search as search
from mpqc.search.evaluate import Evaluator
from mpqc.search.mohaq import Beacons, weight_levels
from mpqc.search.problem import Problem
from mpqc.search.synthetic import synthetic_problem

PAIRS = ((8, 8), (6, 8), (4, 8), (4, 4), (2, 8))
RECOVERED = 0.4
"""Synthetic recovery: a beacon's weights remove this fraction of each of its layers' damage
for configurations that share the layer's choice, and nothing elsewhere."""


def plain_error(problem: Problem) -> Callable[[tuple[int, ...]], float]:
    return lambda config: float(problem.proxy_error(np.array(config)))


def recovering(problem: Problem, created: list) -> Callable:
    table = problem.sensitivity_table()
    rows = np.arange(problem.n_layers)

    def beacon_fn(beacon: tuple[int, ...]) -> Callable[[tuple[int, ...]], float]:
        created.append(beacon)
        anchor = np.array(beacon)

        def error(config: tuple[int, ...]) -> float:
            x = np.array(config)
            damage = table[rows, x]
            return float(np.sum(np.where(x == anchor, (1 - RECOVERED) * damage, damage)))

        return error

    return beacon_fn


def test_weight_levels_index_the_layer_weight_widths() -> None:
    levels = weight_levels(synthetic_problem(2, PAIRS))
    np.testing.assert_array_equal(levels[0], [0, 1, 2, 2, 3])


def test_beacon_error_is_exact_at_the_beacon_and_never_above_plain() -> None:
    problem = synthetic_problem(10, PAIRS, seed=1, size_ratio=0.8)
    created: list = []
    beacons = Beacons(
        problem,
        Evaluator(plain_error(problem)),
        recovering(problem, created),
        threshold=5,
        budget=3,
    )
    rng = np.random.default_rng(0)
    configs = rng.integers(0, len(PAIRS), (200, problem.n_layers))
    estimates = beacons.errors(configs)
    plain = problem.proxy_error(configs)
    assert np.all(np.array(estimates) <= plain + 1e-12)
    assert 0 < len(beacons.configs) <= 3 and created == beacons.configs
    for beacon in beacons.configs:
        assert problem.feasible(np.array(beacon))
        again = beacons.errors(np.array([beacon]))[0]
        assert again == pytest.approx((1 - RECOVERED) * problem.proxy_error(np.array(beacon)))


def test_far_candidates_keep_their_plain_error() -> None:
    problem = synthetic_problem(10, PAIRS, seed=1, size_ratio=2.0)
    beacons = Beacons(
        problem, Evaluator(plain_error(problem)), recovering(problem, []), threshold=0, budget=1
    )
    first, other = np.zeros(10, dtype=int), np.full(10, 4)
    assert beacons.errors(np.array([first, other])) == [
        0.0,
        pytest.approx(problem.proxy_error(other)),
    ]
    assert beacons.configs == [tuple(first.tolist())]


def test_search_with_beacons_counts_beacon_evaluations() -> None:
    problem = synthetic_problem(8, PAIRS, seed=2, size_ratio=0.6)
    evaluator = Evaluator(plain_error(problem))
    created: list = []
    result = search.run(
        problem,
        "mohaq",
        evaluator=evaluator,
        beacon_fn=recovering(problem, created),
        beacons=2,
        generations=10,
    )
    assert len(created) <= 2
    assert result.evaluations > evaluator.calls
    assert "beacons" in result.notes[0]
    plain = search.run(problem, "nsga2", evaluator=Evaluator(plain_error(problem)), generations=10)
    best = min(p.objectives["error"] for p in result.front)
    assert best <= min(p.objectives["error"] for p in plain.front)


def test_without_beacons_it_says_it_is_plain_nsga2() -> None:
    result = search.run(synthetic_problem(5, seed=1), "mohaq", generations=3)
    assert "no beacon_fn given" in result.notes[0]
