"""Brute-force reference answers for small search problems (the tests' ground truth)."""

from __future__ import annotations

import itertools

import numpy as np

from mpqc.search import Point, Problem
from mpqc.search.pareto import non_dominated
from mpqc.search.problem import FEASIBILITY_RTOL


def all_configs(problem: Problem) -> np.ndarray:
    """Every configuration that respects the ties, ``(N, L)``."""
    genes = np.array(list(itertools.product(*(range(int(k)) for k in problem.class_choices))))
    return problem.expand(genes)


def feasible_mask(problem: Problem, configs: np.ndarray) -> np.ndarray:
    """`Problem.feasible` of every row, vectorized."""
    mask = np.ones(len(configs), dtype=bool)
    for name, limit in problem.constraints.items():
        mask &= problem.total(name, configs) <= limit + FEASIBILITY_RTOL * max(abs(limit), 1.0)
    return mask


def best_proxy(problem: Problem) -> float:
    """The least proxy error over every feasible configuration."""
    configs = all_configs(problem)
    return float(problem.proxy_error(configs)[feasible_mask(problem, configs)].min())


def exhaustive_front(problem: Problem) -> tuple[Point, ...]:
    """The true Pareto front over ``problem.objectives`` with the proxy as error."""
    configs = all_configs(problem)
    columns = {
        name: (problem.proxy_error(configs) if name == "error" else problem.total(name, configs))
        for name in problem.objectives
    }
    points = [
        Point(tuple(c), {n: float(columns[n][i]) for n in problem.objectives}, False)
        for i, c in enumerate(configs)
    ]
    return non_dominated(points, problem.objectives)
