"""NEMO (METHODS.md §6): species resizing, the GNN policy, transfer, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mpqc.search._gnn import EncodingMismatchError, GraphPolicy, encode_problem
from mpqc.search.evaluate import Evaluator
from mpqc.search.nemo import DIRECT, GNN, Evolution, Options, search, species_sizes
from mpqc.search.pareto import dominates
from mpqc.search.problem import Problem

PAIRS = ((8, 8), (4, 8), (2, 8))
PENALTY = np.array([0.0, 1.0, 3.0])  # error of a sensitive layer at each choice


def sensitive_family(n_layers: int, seed: int) -> tuple[Problem, Evaluator, np.ndarray]:
    """A graph family whose best zero-error configuration is a function of one node feature.

    The node feature says whether a layer is sensitive: sensitive layers lose accuracy below 8
    bits, the others lose nothing. The sensitivity table is all zeros, so only the feature
    carries the information. The cheapest zero-error configuration ("the rule") is 8 bits on
    sensitive layers and 2 bits elsewhere; it is the point `choose` picks without constraints.
    """
    rng = np.random.default_rng(seed)
    sensitive = rng.integers(0, 2, n_layers).astype(float)
    sensitive[:2] = (0.0, 1.0)
    features = sensitive[:, None]
    chain = tuple((i, i + 1) for i in range(n_layers - 1))
    skips = tuple((i, i + 2) for i in range(0, n_layers - 2, 3))
    problem = Problem(
        layers=tuple(f"n{i}" for i in range(n_layers)),
        choices=(PAIRS,) * n_layers,
        costs={"size": tuple(np.array([8.0, 4.0, 2.0]) for _ in range(n_layers))},
        fixed_costs={},
        sensitivity=tuple(np.zeros(3) for _ in range(n_layers)),
        constraints={},
        features=features,
        edges=chain + skips,
    )
    table = np.where(sensitive[:, None] > 0.5, PENALTY[None, :], 0.0)
    evaluator = Evaluator(lambda key: float(table[np.arange(n_layers), list(key)].sum()))
    rule = np.where(sensitive > 0.5, 0, 2)
    return problem, evaluator, rule


# ------------------------------------------------------------------------ resizing
def test_species_sizes_are_proportional_with_a_floor_and_preserve_the_total() -> None:
    assert species_sizes([10, 0], 48, 5) == [43, 5]
    assert species_sizes([1, 1], 48, 5) == [24, 24]
    assert species_sizes([3, 1], 48, 5) == [36, 12]
    assert species_sizes([0, 0], 48, 5) == [24, 24]
    for counts in ([7, 2], [1, 30], [5, 5], [0, 9]):
        sizes = species_sizes(counts, 47, 5)
        assert sum(sizes) == 47 and min(sizes) >= 5


def test_a_strictly_dominated_species_falls_to_the_floor_after_one_generation() -> None:
    problem, _, _ = sensitive_family(8, seed=3)
    safest = tuple(int(k) for k in problem.safest())

    # The safest configuration is made the worst in error, so it is strictly dominated by
    # every other configuration (they are all smaller too).
    def error(key: tuple[int, ...]) -> float:
        return 100.0 if key == safest else float(sum(key))

    options = Options(population=48)
    evolution = Evolution(problem, Evaluator(error), options, np.random.default_rng(0))
    policy = evolution.species[1].policy
    # An all-zero GNN scores every candidate 0: the argmax tie goes to the safest choice.
    zero = np.zeros(policy.size)
    rng = np.random.default_rng(1)
    direct = [rng.integers(1, 3, problem.n_layers) for _ in range(24)]
    evolution.start({DIRECT: direct, GNN: [zero.copy() for _ in range(24)]})
    assert evolution.front_counts()[GNN] == 0
    assert evolution.front_counts()[DIRECT] > 0

    evolution.step()
    sizes = evolution.sizes()
    assert sizes[GNN] == evolution.floor == 5  # ceil(10% of 48)
    assert sum(sizes.values()) == 48


# ------------------------------------------------------------------------ the policy
def test_policy_is_independent_of_graph_size_and_respects_ties() -> None:
    small, _, _ = sensitive_family(6, seed=0)
    large, _, _ = sensitive_family(30, seed=1)
    policy = GraphPolicy.for_encoding(encode_problem(small))
    assert policy == GraphPolicy.for_encoding(encode_problem(large))
    genome = policy.initial_genome(np.random.default_rng(0))
    config = policy.decide(genome, encode_problem(large))
    assert config.shape == (30,) and set(config) <= {0, 1, 2}

    tied = Problem(
        layers=small.layers,
        choices=small.choices,
        costs=small.costs,
        fixed_costs={},
        sensitivity=small.sensitivity,
        constraints={},
        features=small.features,
        edges=small.edges,
        groups=((1, 4), (2, 3, 5)),
    )
    for seed in range(5):
        genome = policy.initial_genome(np.random.default_rng(seed))
        config = policy.decide(genome, encode_problem(tied))
        assert config[1] == config[4] and config[2] == config[3] == config[5]


def test_policy_refuses_a_problem_with_other_feature_columns() -> None:
    problem, _, _ = sensitive_family(6, seed=0)
    other = Problem(
        layers=problem.layers,
        choices=problem.choices,
        costs=problem.costs,
        fixed_costs={},
        sensitivity=problem.sensitivity,
        constraints={},
        features=np.ones((6, 5)),
        edges=problem.edges,
    )
    policy = GraphPolicy.for_encoding(encode_problem(problem))
    with pytest.raises(EncodingMismatchError, match="same feature columns"):
        policy.decide(policy.initial_genome(np.random.default_rng(0)), encode_problem(other))


# ------------------------------------------------------------------------ transfer
def test_gnn_species_finds_the_feature_rule_and_transfers_it_to_a_larger_graph() -> None:
    # Measured over seeds 0-7 (train seed s, larger graph seed s + 100): the rule is found in
    # 8/8 and transferred exactly in 7/8 (the eighth gets 39 of 40 layers right).
    problem, evaluator, rule = sensitive_family(24, seed=0)
    evolution = Evolution(problem, evaluator, Options(generations=40), np.random.default_rng(0))
    evolution.run()
    point, policy = evolution.best_policy()
    assert point.objectives["error"] == 0.0
    np.testing.assert_array_equal(point.config, rule)

    larger, _, larger_rule = sensitive_family(40, seed=100)
    np.testing.assert_array_equal(policy.apply(larger), larger_rule)

    # The direct encoding has one gene per layer of *this* graph: the only way to reuse a
    # genome on the larger graph is by position, which knows nothing of the new layers'
    # features. Even the perfect genome (the rule itself) is wrong there.
    reused = np.resize(rule, larger.n_layers)
    assert not np.array_equal(reused, larger_rule)
    assert evolution.members[DIRECT][0].genome.shape == (problem.n_layers,)


# ------------------------------------------------------------------------ the strategy
def test_search_returns_a_feasible_front_not_dominated_by_uniform_points() -> None:
    problem, evaluator, _ = sensitive_family(10, seed=2)
    bounded = Problem(
        layers=problem.layers,
        choices=problem.choices,
        costs=problem.costs,
        fixed_costs={},
        sensitivity=problem.sensitivity,
        constraints={"size": 40.0},
        features=problem.features,
        edges=problem.edges,
    )
    result = search(bounded, evaluator, Options(generations=5), np.random.default_rng(0))
    assert result.strategy == "nemo"
    assert bounded.feasible(np.array(result.chosen.config))
    assert result.chosen.objectives["size"] <= 40.0
    assert result.evaluations == evaluator.calls > 0
    for uniform in result.uniform.values():
        assert not any(dominates(uniform, p, bounded.objectives) for p in result.front)


def test_identical_configurations_are_evaluated_once() -> None:
    problem, _, _ = sensitive_family(6, seed=4)
    seen: list[tuple[int, ...]] = []

    def error(key: tuple[int, ...]) -> float:
        seen.append(key)
        return float(sum(key))

    search(problem, Evaluator(error), Options(generations=3), np.random.default_rng(0))
    assert len(seen) == len(set(seen))


def test_same_seed_same_result() -> None:
    runs = []
    for _ in range(2):
        problem, evaluator, _ = sensitive_family(9, seed=5)
        runs.append(search(problem, evaluator, Options(generations=4), np.random.default_rng(7)))
    assert runs[0] == runs[1]
    assert repr(runs[0]) == repr(runs[1])
