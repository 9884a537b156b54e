"""bench.latency's bookkeeping: what a prediction is, how configurations are drawn, how they are
scored."""

from __future__ import annotations

import pytest

from bench.latency import (
    FLOAT,
    UNIFORM,
    Config,
    Row,
    analyse,
    configurations,
    digits_case,
    layer_names,
    lower,
    predict,
    score,
)
from mpqc import hwspecs
from mpqc import ir as mir
from mpqc.ir import annotations


@pytest.fixture(scope="module")
def analysed():
    return analyse(digits_case(), hwspecs.load("x86_avx2"))


def test_prediction_is_the_fixed_part_plus_each_layers_chosen_entry(analysed) -> None:
    names = layer_names(analysed)
    bits = {name: (4, 8) if index % 2 else (8, 8) for index, name in enumerate(names)}
    expected = annotations.MODEL_COST.get(analysed)["fixed"]["latency_s"]
    for layer in mir.quantizable_layers(analysed.graph):
        expected += annotations.COST.get(layer.node)[
            "w4a8" if bits[layer.name] == (4, 8) else "w8a8"
        ]["latency_s"]
    assert predict(analysed, Config("alternate", bits)) == pytest.approx(expected)
    floating = predict(analysed, Config("float", {}))
    assert floating == pytest.approx(
        predict(analysed, Config("float", {name: FLOAT for name in names}))
    )


def test_configurations_are_seeded_and_cover_the_uniform_ones(analysed) -> None:
    case, spec = digits_case(), hwspecs.load("x86_avx2")
    first = configurations(case, analysed, spec, mixes=3, seed=0)
    again = configurations(case, analysed, spec, mixes=3, seed=0)
    assert [c.bits for c in first] == [c.bits for c in again]
    assert [c.name for c in first[: len(UNIFORM)]] == list(UNIFORM)
    assert sum(c.name.startswith("mix") for c in first) == 3
    assert any(c.name.startswith("ilp size") for c in first), (
        "what the search picks is measured too"
    )


def test_lowering_a_configuration_leaves_the_analysed_model_alone(analysed) -> None:
    text = str(analysed.graph)
    lower(
        analysed,
        digits_case(),
        hwspecs.load("x86_avx2"),
        Config("w4a8", {name: (4, 8) for name in layer_names(analysed)}),
    )
    assert str(analysed.graph) == text


def test_score_is_spearman_and_mean_relative_error() -> None:
    rows = [
        Row("m", f"c{i}", measured_s=t, wall_s=2 * t, predicted_s={"spec": 2 * t})
        for i, t in enumerate([1.0, 3.0, 2.0])
    ]
    assert score(rows, "spec") == {
        "n": 3,
        "spearman": pytest.approx(1.0),
        "mean_rel_error": pytest.approx(1.0),
    }
    assert score(rows, "spec", wall=True)["mean_rel_error"] == pytest.approx(0.0)
    reversed_rows = [
        Row("m", r.config, r.measured_s, r.wall_s, {"spec": 1 / r.measured_s}) for r in rows
    ]
    assert score(reversed_rows, "spec")["spearman"] == pytest.approx(-1.0)
