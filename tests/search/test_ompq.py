"""ompq: OMPQ's linear program over weight bits, its rounding, and the allocation it makes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import mpqc.search as search
from mpqc.passes.analysis.sensitivity_orthogonality import (
    centred_gram,
    layer_importance,
    orthogonality_matrix,
)
from mpqc.search import SearchError
from mpqc.search.ompq import Allocator, Ladder, relaxed_bits
from mpqc.search.problem import Problem
from mpqc.search.synthetic import synthetic_problem

PAIRS = ((8, 8), (4, 8), (2, 8))


def fractional_knapsack(
    value: np.ndarray, low: np.ndarray, high: np.ndarray, per_bit: np.ndarray, room: float
) -> np.ndarray:
    """The textbook greedy: fill the best value per unit of cost first."""
    bits = low.astype(float).copy()
    for g in sorted(range(len(value)), key=lambda g: -value[g] / per_bit[g]):
        if value[g] <= 0 or room <= 0:
            break
        step = min(high[g] - low[g], room / per_bit[g])
        bits[g] += step
        room -= step * per_bit[g]
    return bits


@pytest.mark.parametrize("seed", range(12))
def test_the_lp_with_one_budget_is_the_fractional_knapsack_greedy(seed: int) -> None:
    """METHODS §3 honesty test (iii)."""
    rng = np.random.default_rng(seed)
    n = 9
    value, per_bit = rng.uniform(0.1, 5, n), rng.uniform(1, 100, n)
    low, high = np.full(n, 2.0), np.full(n, 8.0)
    room = float(rng.uniform(0, per_bit @ (high - low)))
    bits = relaxed_bits(value, low, high, per_bit[None, :], np.array([room]))
    assert bits == pytest.approx(fractional_knapsack(value, low, high, per_bit, room), abs=1e-6)


def test_the_lp_allocation_grows_with_the_budget() -> None:
    rng = np.random.default_rng(3)
    value, per_bit = rng.uniform(0.1, 5, 12), rng.uniform(1, 100, 12)
    low, high = np.full(12, 2.0), np.full(12, 8.0)
    rooms = np.linspace(0, per_bit @ (high - low), 9)
    allocations = [relaxed_bits(value, low, high, per_bit[None, :], np.array([r])) for r in rooms]
    for smaller, larger in itertools.pairwise(allocations):
        assert np.all(larger >= smaller - 1e-9)
    assert allocations[0] == pytest.approx(low) and allocations[-1] == pytest.approx(high)


def orthogonality_problem(features: list[np.ndarray], beta: float, ratio: float) -> Problem:
    """Equal-size layers scored as sensitivity-orthogonality scores them (w · (8 − b) / 8)."""
    orm = orthogonality_matrix([centred_gram(f) for f in features])
    _, _, w = layer_importance(orm, beta)
    n = len(features)
    size = np.array([100.0 * b / 8 for b, _ in PAIRS])
    return Problem(
        layers=tuple(f"l{i}" for i in range(n)),
        choices=(PAIRS,) * n,
        costs={"size": (size,) * n},
        fixed_costs={},
        sensitivity=tuple(np.array([w[i] * (8 - b) / 8 for b, _ in PAIRS]) for i in range(n)),
        constraints={"size": ratio * 100.0 * n},
    )


@pytest.mark.parametrize("position", [0, 2, 3])
def test_a_layer_orthogonal_to_the_rest_gets_the_most_bits(position: int) -> None:
    """METHODS §3 honesty test (ii): independent features earn at least the duplicates' bits."""
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((256, 8))
    features = [shared * (i + 1) for i in range(3)]  # the same features, rescaled
    features.insert(position, rng.standard_normal((256, 8)))
    problem = orthogonality_problem(features, beta=1.0, ratio=0.5)
    result = search.run(problem, "ompq")
    bits = [w for w, _ in problem.pairs(result.chosen.config)]
    duplicates = [b for i, b in enumerate(bits) if i != position]
    assert bits[position] == 8 > max(duplicates)
    assert problem.feasible(np.array(result.chosen.config))


def test_the_importance_per_bit_of_orthogonality_scores_is_ompqs_weight() -> None:
    rng = np.random.default_rng(1)
    features = [rng.standard_normal((64, 4)) for _ in range(5)]
    problem = orthogonality_problem(features, beta=2.0, ratio=0.5)
    orm = orthogonality_matrix([centred_gram(f) for f in features])
    _, _, w = layer_importance(orm, 2.0)
    assert Ladder(problem).importance == pytest.approx(w / 8)


def test_fit_rounding_spends_the_most_budget_that_fits() -> None:
    """OMPQ's DFS_bit: among floor/ceiling choices, the largest total within the budget."""
    problem = synthetic_problem(8, PAIRS, seed=2, size_ratio=0.55)
    allocator = Allocator(problem, "fit")
    ladder, limit = allocator.ladder, problem.constraints["size"]
    relaxed = allocator.relaxed({"size": limit})
    options = [
        sorted({int(np.flatnonzero(w <= b + 1e-9)[-1]), int(np.flatnonzero(w >= b - 1e-9)[0])})
        for w, b in zip(ladder.widths, relaxed, strict=True)
    ]
    fitting = [
        ladder.total("size", np.array(p))
        for p in itertools.product(*options)
        if ladder.total("size", np.array(p)) <= limit
    ]
    positions = allocator.allocate({"size": limit})
    assert ladder.total("size", positions) == pytest.approx(max(fitting))


@pytest.mark.parametrize("rounding", ["fit", "nearest"])
@pytest.mark.parametrize("ratio", [0.3, 0.45, 0.6, 0.8, 1.0])
def test_every_allocation_meets_its_budget(rounding: str, ratio: float) -> None:
    problem = synthetic_problem(15, PAIRS, seed=4, size_ratio=ratio)
    result = search.run(problem, "ompq", rounding=rounding)
    assert problem.feasible(np.array(result.chosen.config))
    assert result.evaluations == 0 and "OMPQ linear program" in result.notes[0]


def test_weight_bits_come_with_the_widest_activation_the_layer_offers() -> None:
    pairs = ((8, 8), (8, 4), (4, 8), (4, 4))
    problem = synthetic_problem(5, pairs, seed=0, size_ratio=0.7)
    result = search.run(problem, "ompq")
    assert {a for _, a in problem.pairs(result.chosen.config)} == {8}


def test_a_budget_only_lower_activations_meet_is_refused_in_one_line() -> None:
    pairs = ((8, 8), (4, 8), (8, 2))
    problem = synthetic_problem(5, pairs, seed=0, objectives=("error", "bops"))
    bops = problem.cost_table("bops")
    limit = float(bops[:, 2].sum() + problem.fixed_costs["bops"])  # all w8a2: below every a8 pair
    problem = Problem(
        layers=problem.layers,
        choices=problem.choices,
        costs=problem.costs,
        fixed_costs=problem.fixed_costs,
        sensitivity=problem.sensitivity,
        constraints={"bops": limit},
        objectives=("error", "bops"),
    )
    with pytest.raises(SearchError, match="widest activations.*ilp"):
        search.run(problem, "ompq")


def test_a_bad_rounding_is_refused() -> None:
    with pytest.raises(SearchError, match="rounding must be one of fit, nearest"):
        search.run(synthetic_problem(3), "ompq", rounding="up")
