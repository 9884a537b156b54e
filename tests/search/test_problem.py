"""Problem: validation, totals, uniform points, ties and the infeasibility message."""

from __future__ import annotations

import numpy as np
import pytest

from mpqc.search import InfeasibleError, Problem, SearchError
from mpqc.search.problem import format_value
from mpqc.search.synthetic import synthetic_problem


def tiny(**overrides: object) -> Problem:
    """Three layers; layer 0 pinned to w8a8 (a single candidate)."""
    fields: dict[str, object] = dict(
        layers=("a", "b", "c"),
        choices=(((8, 8),), ((8, 8), (4, 8)), ((8, 8), (4, 8))),
        costs={"size": ((100.0,), (80.0, 40.0), (60.0, 30.0))},
        fixed_costs={"size": 10.0},
        sensitivity=((0.0,), (0.0, 2.0), (0.0, 1.0)),
        constraints={"size": 200.0},
    )
    fields.update(overrides)
    return Problem(**fields)  # type: ignore[arg-type]


def test_totals_include_fixed_costs_and_accept_batches() -> None:
    problem = tiny()
    config = np.array([0, 1, 0])
    assert problem.total("size", config) == 10 + 100 + 40 + 60
    assert problem.totals(config) == {"size": 210.0}
    assert problem.proxy_error(config) == 2.0
    batch = np.array([[0, 0, 0], [0, 1, 1]])
    np.testing.assert_allclose(problem.total("size", batch), [250.0, 180.0])
    assert problem.violations(config) == {"size": pytest.approx(10.0)}
    assert not problem.feasible(config)
    assert problem.feasible(np.array([0, 1, 1]))


def test_cost_table_is_padded_with_inf() -> None:
    table = tiny().cost_table("size")
    assert table.shape == (3, 2)
    assert np.isinf(table[0, 1]) and table[1, 1] == 40.0


def test_uniform_configs_ignore_single_choice_layers() -> None:
    uniform = tiny().uniform_configs()
    assert list(uniform) == ["w8a8", "w4a8"]
    np.testing.assert_array_equal(uniform["w4a8"], [0, 1, 1])


def test_uniform_configs_fall_back_to_the_next_more_precise_choice() -> None:
    problem = tiny(choices=(((8, 8),), ((8, 8), (4, 8)), ((8, 8), (4, 4))))
    uniform = problem.uniform_configs()
    assert list(uniform) == ["w8a8", "w4a8", "w4a4"]
    np.testing.assert_array_equal(uniform["w4a8"], [0, 1, 0])
    np.testing.assert_array_equal(uniform["w4a4"], [0, 1, 1])


def test_uniform_configs_skip_pairs_a_layer_cannot_reach() -> None:
    problem = tiny(choices=(((8, 8),), ((16, 16), (8, 8)), ((8, 8), (4, 8))))
    assert list(problem.uniform_configs()) == ["w8a8", "w4a8"]


def test_value_format() -> None:
    assert format_value(1.5e6, "B") == "1.5 MB"
    assert format_value(0.002, "s") == "2 ms"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"choices": (((8, 8),), ((8, 8), (4, 8)))}, "3 layers but 2 choice lists"),
        ({"sensitivity": ((0.0,), (0.0,), (0.0, 1.0))}, "expected (2,)"),
        ({"constraints": {"latency": 1.0}}, "constraint on 'latency'"),
        ({"objectives": ("error", "energy")}, "objective 'energy'"),
        ({"groups": ((0, 1),)}, "identical candidate lists"),
        ({"edges": ((0, 7),)}, "outside 0..2"),
        ({"fixed_costs": {"energy": 1.0}}, "fixed costs for unknown objectives"),
        (
            {"layers": (), "choices": (), "costs": {}, "sensitivity": (), "constraints": {}},
            "at least one layer",
        ),
    ],
)
def test_invalid_problems_say_what_is_wrong(overrides: dict, message: str) -> None:
    with pytest.raises(SearchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny(**overrides)


def test_validate_rejects_out_of_range_and_broken_ties() -> None:
    problem = tiny(groups=((1, 2),))
    with pytest.raises(SearchError, match="out of range"):
        problem.validate(np.array([0, 2, 0]))
    with pytest.raises(SearchError, match="tied layers"):
        problem.validate(np.array([0, 1, 0]))
    np.testing.assert_array_equal(problem.validate(np.array([0, 1, 1])), [0, 1, 1])


def test_tie_classes_expand_and_compress() -> None:
    problem = synthetic_problem(5, groups=((0, 3), (3, 4)))
    assert problem.tie_classes == ((0, 3, 4), (1,), (2,))
    config = problem.expand(np.array([2, 0, 1]))
    np.testing.assert_array_equal(config, [2, 0, 1, 2, 2])
    np.testing.assert_array_equal(problem.compress(config), [2, 0, 1])


def test_check_feasible_names_the_cheapest_reachable_value() -> None:
    problem = tiny(constraints={"size": 150.0})
    with pytest.raises(InfeasibleError) as info:
        problem.check_feasible()
    error = info.value
    assert (error.objective, error.limit, error.cheapest) == ("size", 150.0, 180.0)
    assert str(error) == "no configuration meets max-size 150 B: the cheapest reachable is 180 B"


def test_check_feasible_detects_constraints_that_only_conflict_together() -> None:
    # size wants layer 1 low, latency wants it high: each alone is reachable, both are not
    problem = tiny(
        costs={
            "size": ((100.0,), (80.0, 40.0), (60.0, 30.0)),
            "latency": ((1.0,), (1.0, 3.0), (1.0, 1.0)),
        },
        constraints={"size": 185.0, "latency": 3.5},
    )
    with pytest.raises(InfeasibleError, match="together with max-size") as info:
        problem.check_feasible()
    assert info.value.objective == "latency" and info.value.cheapest == pytest.approx(5.0)


def test_feasible_problem_passes_the_check() -> None:
    tiny().check_feasible()


def test_graph_carries_names_and_edges() -> None:
    problem = synthetic_problem(4)
    graph = problem.graph()
    assert graph.nodes[2]["name"] == "layer2"
    assert list(graph.edges) == [(0, 1), (1, 2), (2, 3)]
