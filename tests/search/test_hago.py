"""hago: HAGO's greedy coordinate search over the choices the hardware allows."""

from __future__ import annotations

import numpy as np
import pytest

import mpqc.search as search
from mpqc.search.hago import coordinate_search, edge_choices
from mpqc.search.problem import Problem
from mpqc.search.synthetic import synthetic_problem

INT = ((8, 8), (4, 8))
FLOAT_ONLY = ((32, 32),)


def toy_graph(size_limit: float | None = None) -> Problem:
    """Conv -> Add -> Conv -> Gemm, the Add float-only on this chip; only the second Conv is
    sensitive below 8 bits."""
    choices = (INT, FLOAT_ONLY, INT, INT)
    size = {INT: np.array([8.0, 4.0]), FLOAT_ONLY: np.array([32.0])}
    return Problem(
        layers=("conv1", "add", "conv2", "fc"),
        choices=choices,
        costs={"size": tuple(size[c] for c in choices)},
        fixed_costs={},
        sensitivity=tuple(np.zeros(len(c)) for c in choices),
        constraints={} if size_limit is None else {"size": size_limit},
    )


def toy_error(config: tuple[int, ...]) -> float:
    """Lowering conv2 costs 1; lowering anything else costs next to nothing."""
    return (1.0 if config[2] == 1 else 0.0) + 1e-6 * sum(config)


def test_the_methods_toy_graph() -> None:
    """METHODS §2 honesty test: float stays float, the sensitive edge at 8, the rest lowest,
    and one trial per choice of every searched edge."""
    problem = toy_graph()
    calls: list[tuple[int, ...]] = []
    evaluator = search.Evaluator(lambda config: calls.append(config) or toy_error(config))
    result = search.run(problem, "hago", evaluator=evaluator)
    assert problem.pairs(result.chosen.config) == ((4, 8), (32, 32), (8, 8), (4, 8))
    choices = edge_choices(problem, 4)
    _, trials = coordinate_search(
        problem, search.Evaluator(toy_error), choices, epsilon=0.01, cost="size"
    )
    assert len(trials) == sum(len(ks) for ks in choices if len(ks) > 1) == 6
    assert {t.edge for t in trials} == {0, 2, 3}  # the float-only Add is not searched
    assert len(calls) == len(set(calls)) == result.evaluations


def test_accuracy_alone_keeps_every_layer_at_its_widest() -> None:
    """With no tolerance HAGO maximizes accuracy: nothing is lowered for free."""
    problem = toy_graph()
    result = search.run(problem, "hago", evaluator=search.Evaluator(toy_error), tolerance=0.0)
    assert problem.pairs(result.chosen.config) == ((8, 8), (32, 32), (8, 8), (8, 8))


def test_a_budget_rejects_trials_that_could_no_longer_meet_it() -> None:
    """Greedy in topological order: conv1 keeps 8 bits while the budget still allows it, so
    conv2's 8-bit trial can no longer meet it and is rejected unevaluated (HAGO's myopia)."""
    problem = toy_graph(size_limit=32 + 4 + 8 + 4)
    result = search.run(problem, "hago", evaluator=search.Evaluator(toy_error), tolerance=0.0)
    assert problem.pairs(result.chosen.config) == ((8, 8), (32, 32), (4, 8), (4, 8))
    _, trials = coordinate_search(
        problem, search.Evaluator(toy_error), edge_choices(problem, 4), 0.0, "size"
    )
    assert [(t.edge, t.choice) for t in trials] == [(0, 0), (0, 1), (2, 1), (3, 1)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ratio", [0.4, 0.6, 0.9])
def test_the_decided_configuration_meets_the_budget(seed: int, ratio: float) -> None:
    problem = synthetic_problem(10, ((8, 8), (4, 8), (2, 8)), seed=seed, size_ratio=ratio)
    result = search.run(problem, "hago")
    assert problem.feasible(np.array(result.chosen.config))
    assert any("greedy coordinate search" in note for note in result.notes)


def test_choices_stop_at_four_bits_unless_the_budget_needs_lower() -> None:
    pairs = ((8, 8), (4, 8), (2, 8))
    loose = synthetic_problem(8, pairs, seed=1, size_ratio=0.9)
    chosen = loose.pairs(search.run(loose, "hago").chosen.config)
    assert min(w for w, _ in chosen) >= 4
    tight = synthetic_problem(8, pairs, seed=1, size_ratio=0.4)
    result = search.run(tight, "hago")
    assert any("below 4 bits" in note for note in result.notes)
    assert min(w for w, _ in tight.pairs(result.chosen.config)) == 2


def test_the_sequential_tuner_stops_early() -> None:
    problem = synthetic_problem(10, ((8, 8), (4, 8), (4, 4)), seed=3, size_ratio=0.9)
    choices = edge_choices(problem, 4)
    evaluator = search.Evaluator(lambda c: float(problem.proxy_error(np.array(c))))
    _, full = coordinate_search(problem, evaluator, choices, epsilon=0.0, cost="size")
    _, early = coordinate_search(
        problem, evaluator, choices, epsilon=0.0, cost="size", sequential=True
    )
    assert len(early) < len(full)
