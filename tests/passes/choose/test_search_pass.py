"""The search pass: IR <-> mpqc.search, budgets, exact evaluation, what it writes back."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from models import build, random_inputs, small_cnn

from mpqc import hwspecs, passes
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import (
    CalibrationData,
    CompileContext,
    PassInputError,
    PassManager,
    build_pipeline,
    format_pipeline,
    resolve_pipeline,
)
from mpqc.passes.choose.latency_cap import ForcedSlowdownError
from mpqc.passes.choose.layer_graph import layer_edges
from mpqc.passes.choose.search import resolve_budget
from mpqc.search import InfeasibleError


@pytest.fixture(scope="module")
def analysed() -> tuple[ir.Model, CalibrationData]:
    model = small_cnn()
    data = CalibrationData(tuple(random_inputs(model, 6, batch=2)))
    context = CompileContext(
        hw=hwspecs.load("x86_avx2"), calibration=data, wbits=(8, 4), abits=(8,)
    )
    PassManager(build_pipeline("canonicalize,calibrate,sensitivity-output,cost", context))(model)
    return model, data


def _search(analysed, text: str, **constraints: str) -> tuple[ir.Model, CompileContext]:
    model, data = analysed
    model = ir.from_proto(ir.to_proto(model))
    context = CompileContext(hw=hwspecs.load("x86_avx2"), calibration=data, constraints=constraints)
    PassManager(build_pipeline(text, context))(model)
    return model, context


@pytest.mark.parametrize(
    ("objective", "text", "expected"),
    [
        ("size", "0.25x", 250.0),
        ("size", "3MB", 3e6),
        ("size", "2 KiB", 2048.0),
        ("latency", "2ms", 2e-3),
        ("energy", "5 mJ", 5e-3),
        ("bops", "2G", 2e9),
        ("bops", "0.5x", 500.0),
    ],
)
def test_budgets_resolve_to_base_units(objective: str, text: str, expected: float) -> None:
    assert resolve_budget(objective, text, reference=1000.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("objective", "text"),
    [("size", "3 parsecs"), ("size", "abcx"), ("bops", "lots"), ("volume", "3")],
)
def test_bad_budgets_are_one_line_errors(objective: str, text: str) -> None:
    with pytest.raises(PassInputError) as info:
        resolve_budget(objective, text, reference=1.0)
    assert "\n" not in str(info.value)


def _all_w8a8_size(model: ir.Model) -> float:
    layers = quantizable_layers(model.graph)
    fixed = annotations.MODEL_COST.get(model)["fixed"]["size"]
    return fixed + sum(annotations.COST.get(layer.node)["w8a8"]["size"] for layer in layers)


def test_chosen_bits_meet_the_budget_and_the_front_is_written(analysed) -> None:
    budget = 0.9 * _all_w8a8_size(analysed[0])  # w8a8 everywhere does not fit
    model, _ = _search(analysed, "search{strategy=ilp,latency_cap=false}", size=f"{budget}B")
    front = annotations.PARETO.get(model)
    assert front["chosen_objectives"]["size"] <= budget
    assert front["evaluations"] == 0  # ilp optimizes the proxy, as HAWQ-V3 does
    bits = [annotations.BITS.get(layer.node) for layer in quantizable_layers(model.graph)]
    # pinned ends (the head Gemm may take a dynamic range: 8 bits too)
    assert bits[0] == {"w": 8, "a": 8} and (bits[-1]["w"], bits[-1]["a"]) == (8, 8)
    assert any(b["w"] == 4 for b in bits)
    assert all(
        set(point["bits"]) == {layer.name for layer in quantizable_layers(model.graph)}
        for point in front["points"]
    )


def test_a_size_budget_alone_never_buys_a_model_slower_than_uniform_int8(analysed) -> None:
    """4-bit convs run a float kernel behind DequantizeLinear on x86: slower than int8. A budget
    only they reach is refused with the layers that cost it; --max-latency allows it."""
    budget = 0.9 * _all_w8a8_size(analysed[0])
    with pytest.raises(ForcedSlowdownError, match=r"slower than uniform w8a8.*w4a8 \+") as refused:
        _search(analysed, "search{strategy=ilp}", size=f"{budget}B")
    assert refused.value.cheapest > refused.value.limit
    allowed = f"{refused.value.cheapest * 1.01}s"
    model, context = _search(analysed, "search{strategy=ilp}", size=f"{budget}B", latency=allowed)
    front = annotations.PARETO.get(model)
    assert "latency_cap" not in front and front["chosen_objectives"]["size"] <= budget
    assert not any("no --max-latency" in note for note in context.notes)


def test_the_pinned_ends_are_released_when_the_budget_needs_them(analysed) -> None:
    with pytest.raises(InfeasibleError) as unpinned:
        _search(analysed, "search{strategy=ilp,pin_ends=false,latency_cap=false}", size="1B")
    budget = unpinned.value.cheapest * 1.0001  # reachable only with the ends below 8 bits
    model, context = _search(analysed, "search{strategy=ilp,latency_cap=false}", size=f"{budget}B")
    front = annotations.PARETO.get(model)
    assert front["pinned"] == [] and front["chosen_objectives"]["size"] <= budget
    bits = [annotations.BITS.get(layer.node) for layer in quantizable_layers(model.graph)]
    assert bits[0]["w"] == 4 and bits[-1]["w"] == 4
    assert any("released the pinned first and last layers" in note for note in context.notes)


_WIDE_HEAD = """
<ir_version: 10, opset_import: ["" : 17]>
wide_head (float[N,3,8,8] image) => (float[N,200] logits) {
  c1 = Conv <pads=[1,1,1,1]> (image, w1, b1)
  r1 = Relu(c1)
  c2 = Conv <pads=[1,1,1,1], strides=[2,2]> (r1, w2, b2)
  r2 = Relu(c2)
  p = GlobalAveragePool(r2)
  f = Flatten(p)
  logits = Gemm <transB=1> (f, w3, b3)
}
"""


def test_a_slow_budget_is_refused_with_the_fastest_model_the_pins_released_allow() -> None:
    """A wide head at 4 bits runs MatMulNBits, nearly as fast as int8; a conv at 4 bits runs in
    float behind a DequantizeLinear. With the head pinned at 8 bits the budget needs the slow conv;
    the pins give way, and what is left to refuse is the small slowdown of the 4-bit head (a budget
    the pins alone made slow would be met: the same release, with the latency limit met)."""
    weights = {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (64, 16, 3, 3), "b2": (64,)}
    model = ir.from_proto(build(_WIDE_HEAD, {**weights, "w3": (200, 64), "b3": (200,)}))
    data = CalibrationData(tuple(random_inputs(model, 6, batch=2)))
    context = CompileContext(
        hw=hwspecs.load("x86_avx2"), calibration=data, wbits=(8, 4), abits=(8,)
    )
    PassManager(build_pipeline("canonicalize,calibrate,sensitivity-output,cost", context))(model)
    budget = f"{_all_w8a8_size(model) - 4000}B"  # the 4-bit head, or the 4-bit middle conv
    with pytest.raises(ForcedSlowdownError) as unpinned:
        _search((model, data), "search{strategy=ilp,pin_ends=false}", size=budget)
    with pytest.raises(ForcedSlowdownError) as refused:
        _search((model, data), "search{strategy=ilp}", size=budget)
    assert refused.value.cheapest == unpinned.value.cheapest < 1.1 * refused.value.limit
    assert "logits w4a8" in str(refused.value) and "c2" not in str(refused.value)


def test_the_implicit_latency_limit_is_uniform_int8s_and_said(analysed) -> None:
    model, context = _search(analysed, "search{strategy=ilp}", size="0.5x")
    front = annotations.PARETO.get(model)
    cap = front["latency_cap"]
    assert cap["reference"] == "w8a8" and front["constraints"]["latency"] == cap["latency_s"]
    assert cap["chosen_latency_s"] <= cap["latency_s"] * (1 + 1e-9)
    assert any("no --max-latency" in note for note in context.notes)


def test_exact_strategies_evaluate_configurations(analysed) -> None:
    model, _ = _search(analysed, "search{strategy=nsga2,generations=3}", size="0.5x")
    assert annotations.PARETO.get(model)["evaluations"] > 0
    model, _ = _search(analysed, "search{strategy=ilp,exact=never}", size="0.5x")
    assert annotations.PARETO.get(model)["evaluations"] == 0


def test_infeasible_budget_names_the_cheapest_value(analysed) -> None:
    with pytest.raises(InfeasibleError, match="cheapest reachable"):
        _search(analysed, "search", size="10B")


def test_strategy_options_are_declared_and_checked_at_parse_time() -> None:
    from mpqc.search import nsga2

    [(_, options)] = resolve_pipeline("search{generations=5,strategy=nsga2}")
    assert options.strategy_options == nsga2.Options(generations=5)
    assert format_pipeline(resolve_pipeline("search{strategy=nsga2,generations=5}")) == (
        "search{strategy=nsga2,generations=5}"
    )
    assert (
        resolve_pipeline("search")[0][1].strategy_options
        == passes.get("search").components()["ilp"]()
    )
    with pytest.raises(
        PassInputError, match=r"has no option 'bogus' \(options: strategy, .*; with ilp"
    ):
        resolve_pipeline("search{strategy=ilp,bogus=1}")
    with pytest.raises(PassInputError, match="has no option 'generations'"):
        resolve_pipeline("search{strategy=ilp,generations=5}")  # nsga2's, not ilp's
    with pytest.raises(PassInputError, match="option 'generations': 'many' is not an integer"):
        resolve_pipeline("search{strategy=nsga2,generations=many}")
    with pytest.raises(
        PassInputError, match="has no option 'beacon_fn'"
    ):  # a callable: Python only
        resolve_pipeline("search{strategy=mohaq,beacon_fn=f}")
    with pytest.raises(PassInputError, match="unknown search strategy"):
        resolve_pipeline("search{strategy=annealing}")


def test_layer_edges_follow_data_flow_through_other_ops(analysed) -> None:
    model, _ = analysed
    # c1 -> c2 (through Relu), c2 -> c3, c3 -> Gemm through Add/Relu/Pool/Flatten, and c2 -> Gemm
    # via the residual.
    assert layer_edges(model, quantizable_layers(model.graph)) == ((0, 1), (1, 2), (1, 3), (2, 3))


def test_embedding_lookups_are_not_pinned() -> None:
    from models import build

    proto = build(
        """
    <ir_version: 10, opset_import: ["" : 17]>
    embed (int64[N,5] ids) => (float[N,5,3] y) {
      e = Gather(table, ids)
      h = MatMul(e, w1)
      y = MatMul(h, w2)
    }""",
        {"table": (64, 4), "w1": (4, 4), "w2": (4, 3)},
    )
    model = ir.from_proto(proto)
    ids = np.array([[1, 2, 3, 4, 5]], np.int64)
    data = CalibrationData(tuple({"ids": ids} for _ in range(3)))
    context = CompileContext(
        hw=hwspecs.load("x86_avx2"), calibration=data, wbits=(8, 4), abits=(8,)
    )
    PassManager(
        build_pipeline(
            "canonicalize,calibrate,sensitivity-weight-error,cost,search{metric=weight-error}",
            context,
        )
    )(model)
    from mpqc.passes.choose.search import SearchPass

    problem = SearchPass(context=context, metric="weight-error").problem(
        model, quantizable_layers(model.graph)
    )
    assert [len(c) for c in problem.choices] == [2, 1, 1]  # the table keeps its 4-bit choice
