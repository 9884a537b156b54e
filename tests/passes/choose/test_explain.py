"""The search's account of its choice: every layer above its cheapest bits has a reason."""

from __future__ import annotations

import pytest

from mpqc.passes.choose.explain import PINNED, explain_choice
from mpqc.search import Problem


def _problem(**overrides: object) -> Problem:
    """Three layers priced by hand: 'a' can drop to w4 (2e-3 damage per byte saved), so can 'b'
    (4.5e-3 per byte), 'c' has one pair."""
    fields: dict[str, object] = dict(
        layers=("a", "b", "c"),
        choices=(((8, 8), (4, 8)), ((8, 8), (4, 8)), ((8, 8),)),
        costs={
            "size": ((2000.0, 1000.0), (4000.0, 2000.0), (500.0,)),
            "latency": ((1e-3, 2e-3), (1e-3, 2e-3), (1e-4,)),
        },
        fixed_costs={"size": 100.0, "latency": 0.0},
        sensitivity=((0.0, 2.0), (0.0, 9.0), (0.0,)),
        constraints={"size": 5000.0},
    )
    return Problem(**(fields | overrides))  # type: ignore[arg-type]


def _explain(problem: Problem, pinned: set[str] = frozenset()) -> dict:
    return explain_choice(
        problem, (1, 0, 0), ("Conv", "Conv", "Gather"), set(pinned), "ilp", "output"
    )


def test_kept_reason_compares_damage_per_byte_with_the_costliest_drop_taken() -> None:
    account = _explain(_problem())
    a, b, c = account["layers"]
    assert a["reason"] is None and a["chosen"] == "w4a8" and a["kind"] is None
    assert b["reason"] == (
        "kept: w4a8 would add +9 damage to save 2 kB (4.5/kB, above the costliest drop taken, "
        "2/kB); it would also run 1 ms slower; the budget was met without it"
    )
    assert b["kind"] == "kept by the search"
    assert c["reason"].startswith("spec has no cheaper pair for this layer (candidates: w8a8)")
    assert account["cutoff"] == pytest.approx(2e-3)
    assert (account["unit"], account["scale"], account["budget"]) == ("kB", 1e3, 5000.0)
    assert account["predicted"] == {
        "size": 1000.0 + 4000.0 + 500.0 + 100.0,
        "latency": pytest.approx(3.1e-3),
    }
    assert b["candidates"][1] == {"pair": "w4a8", "damage": 9.0, "size": 2000.0, "latency_s": 2e-3}


def test_without_a_budget_and_with_a_pin() -> None:
    pinned = _explain(_problem(constraints={}), pinned={"b"})
    assert pinned["layers"][1]["reason"] == PINNED and pinned["layers"][1]["kind"] == "pinned"
    assert pinned["budget"] is None
    free = _explain(_problem(constraints={}))
    assert free["layers"][1]["reason"].endswith("; no budget asked for it")
