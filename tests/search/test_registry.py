"""The registry and the rules every strategy keeps (METHODS §8, DESIGN "Search")."""

from __future__ import annotations

import numpy as np
import pytest

import mpqc.search as search
from mpqc.search import InfeasibleError, SearchError
from mpqc.search.pareto import dominates
from mpqc.search.synthetic import synthetic_problem

OWN = ["ilp", "greedy", "eagl", "nsga2", "mohaq", "hago", "ompq"]
FAST = {"nsga2": {"generations": 15}, "mohaq": {"generations": 15}}


def test_strategies_are_listed() -> None:
    assert set(OWN) <= set(search.strategies())
    assert search.strategies() == sorted(search.strategies())


def test_unknown_strategy_lists_the_valid_names() -> None:
    with pytest.raises(SearchError, match="unknown search strategy 'magic'; choose one of .*ilp"):
        search.run(synthetic_problem(3), "magic")


def test_unknown_option_lists_the_valid_options() -> None:
    with pytest.raises(SearchError, match="unknown option.*budget.*valid options: budgets"):
        search.run(synthetic_problem(3), "ilp", budget=3)


@pytest.mark.parametrize("strategy", OWN)
def test_infeasible_constraints_fail_before_searching(strategy: str) -> None:
    problem = synthetic_problem(6, size_ratio=0.05)
    calls = []
    evaluator = search.Evaluator(lambda config: calls.append(config) or 0.0)
    with pytest.raises(InfeasibleError, match="cheapest reachable is") as info:
        search.run(problem, strategy, evaluator=evaluator)
    assert info.value.cheapest == pytest.approx(problem.total("size", problem.cheapest()))
    assert calls == []


@pytest.mark.parametrize("strategy", OWN)
def test_same_seed_same_result(strategy: str) -> None:
    problem = synthetic_problem(12, seed=4, size_ratio=0.7)
    first = search.run(problem, strategy, seed=7, **FAST.get(strategy, {}))
    again = search.run(problem, strategy, seed=7, **FAST.get(strategy, {}))
    assert first == again
    assert repr(first) == repr(again)


@pytest.mark.parametrize("strategy", OWN)
@pytest.mark.parametrize("seed", [0, 1])
def test_front_is_never_dominated_by_a_uniform_point(strategy: str, seed: int) -> None:
    problem = synthetic_problem(10, seed=seed, size_ratio=0.6)
    result = search.run(problem, strategy, seed=seed, **FAST.get(strategy, {}))
    assert set(result.uniform) == {"w8a8", "w4a8", "w4a4"}
    for uniform in result.uniform.values():
        assert not any(dominates(uniform, p, problem.objectives) for p in result.front)
    assert problem.feasible(np.array(result.chosen.config))
    assert result.strategy == strategy


@pytest.mark.parametrize("strategy", OWN)
def test_exact_evaluator_budget_is_reported(strategy: str) -> None:
    problem = synthetic_problem(8, seed=5, size_ratio=0.6)
    evaluator = search.Evaluator(lambda config: float(problem.proxy_error(np.array(config))))
    result = search.run(problem, strategy, evaluator=evaluator, **FAST.get(strategy, {}))
    assert result.evaluations == evaluator.calls > 0
    assert all(p.exact for p in result.front)
