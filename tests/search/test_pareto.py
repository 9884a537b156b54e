"""Pareto points: dominance, hypervolume, the chosen point, result construction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mpqc.search import Point, SearchError, choose, hypervolume, non_dominated
from mpqc.search.pareto import dominates, make_result
from mpqc.search.synthetic import synthetic_problem

OBJ = ("error", "size")


def point(config: tuple[int, ...], error: float, size: float) -> Point:
    return Point(config, {"error": error, "size": size}, exact=False)


def test_non_dominated_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(3)
    points = [point((i,), *rng.integers(0, 20, 2).astype(float)) for i in range(60)]
    front = non_dominated(points, OBJ)
    expected = {p.config for p in points if not any(dominates(q, p, OBJ) for q in points)}
    assert {p.config for p in front} == expected
    assert list(front) == sorted(front, key=lambda p: (p.vector(OBJ), p.config))


def test_non_dominated_keeps_one_point_per_configuration() -> None:
    front = non_dominated([point((1,), 1.0, 1.0), point((1,), 1.0, 1.0)], OBJ)
    assert len(front) == 1


def test_hypervolume_of_a_staircase() -> None:
    points = [point((0,), 0.0, 2.0), point((1,), 1.0, 1.0), point((2,), 2.0, 0.0)]
    assert hypervolume(points, OBJ, (3.0, 3.0)) == pytest.approx(3 + 2 + 1)


def test_choose_prefers_low_error_then_low_cost_among_feasible() -> None:
    problem = synthetic_problem(2, size_ratio=10.0)
    configs = list(itertools.product(range(3), repeat=2))
    a, b, c = (
        point(cfg, e, s)
        for cfg, e, s in [(configs[0], 1.0, 5.0), (configs[1], 1.0, 4.0), (configs[2], 2.0, 1.0)]
    )
    assert choose([a, b, c], problem) is b


def test_choose_refuses_a_front_without_feasible_points() -> None:
    problem = synthetic_problem(2, size_ratio=10.0)
    limit = problem.constraints["size"]
    with pytest.raises(SearchError, match="meets the constraints"):
        choose([point((0, 0), 0.0, limit)], synthetic_problem(2, size_ratio=1e-9))
    assert limit > 0


def test_make_result_includes_uniform_points_in_the_front() -> None:
    problem = synthetic_problem(3, size_ratio=2.0)
    uniform = {"w8a8": point((0, 0, 0), 0.0, problem.total("size", np.zeros(3, int)))}
    dominated = point((1, 1, 1), 1.0, 1e12)
    result = make_result("test", problem, [dominated], uniform, 0)
    assert result.front == (uniform["w8a8"],)
    assert result.chosen == uniform["w8a8"]
