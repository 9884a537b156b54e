"""Evaluators: memoized, counted, order-preserving, identical under a process pool."""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from mpqc.search import Evaluator, ProxyEvaluator
from mpqc.search.evaluate import evaluate_points, evaluate_uniform
from mpqc.search.synthetic import synthetic_problem


def quadratic_error(config: tuple[int, ...]) -> float:
    """Picklable, deterministic, non-additive stand-in for an exact evaluation."""
    return float(sum((i + 1) * k * k for i, k in enumerate(config)) ** 0.5)


def test_memoizes_and_counts_distinct_configurations() -> None:
    seen = []

    def fn(config: tuple[int, ...]) -> float:
        seen.append(config)
        return float(sum(config))

    evaluator = Evaluator(fn)
    assert evaluator.many([(1, 2), (0, 0), (1, 2), np.array([0, 0])]) == [3.0, 0.0, 3.0, 0.0]
    assert evaluator((1, 2)) == 3.0
    assert evaluator.calls == 2 and seen == [(1, 2), (0, 0)]
    assert dict(evaluator.cache) == {(1, 2): 3.0, (0, 0): 0.0}


def test_nan_counts_as_infinite_error() -> None:
    assert Evaluator(lambda config: math.nan)((0,)) == math.inf


def test_results_identical_under_executors() -> None:
    rng = np.random.default_rng(0)
    configs = [tuple(row) for row in rng.integers(0, 3, (40, 6)).tolist()] * 2
    inline = Evaluator(quadratic_error).many(configs)
    with ProcessPoolExecutor(max_workers=2) as pool:
        pooled = Evaluator(quadratic_error, executor=pool)
        assert pooled.many(configs) == inline
        assert pooled.calls == len(set(configs))
    with ThreadPoolExecutor(max_workers=3) as pool:
        assert Evaluator(quadratic_error, executor=pool).many(configs) == inline


def test_proxy_evaluator_sums_the_sensitivity_table_for_free() -> None:
    problem = synthetic_problem(5, seed=2)
    proxy = ProxyEvaluator(problem)
    config = np.array([0, 1, 2, 1, 0])
    assert proxy(config) == problem.proxy_error(config)
    assert proxy.many([]) == []
    assert proxy.calls == 0 and not proxy.exact


def test_points_carry_every_objective() -> None:
    problem = synthetic_problem(4, objectives=("error", "size", "bops"))
    evaluator = Evaluator(quadratic_error)
    points = evaluate_points(problem, evaluator, [np.array([1, 1, 0, 2])])
    assert points[0].config == (1, 1, 0, 2) and points[0].exact
    assert points[0].objectives == {
        "error": quadratic_error((1, 1, 0, 2)),
        "size": problem.total("size", np.array([1, 1, 0, 2])),
        "bops": problem.total("bops", np.array([1, 1, 0, 2])),
    }
    assert list(evaluate_uniform(problem, evaluator)) == ["w8a8", "w4a8", "w4a4"]


def test_results_identical_under_a_dask_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    configs = [tuple(row) for row in np.random.default_rng(1).integers(0, 3, (30, 5)).tolist()]
    inline = Evaluator(quadratic_error).many(configs)
    with distributed.Client(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        assert Evaluator(quadratic_error, executor=client.get_executor()).many(configs) == inline
