"""``default{...}``: the steps mpqc runs, decided in passes/ from the options and the context."""

from __future__ import annotations

import dataclasses

import pytest

import mpqc
from mpqc import hwspecs
from mpqc.compiler import after_search
from mpqc.passes import CompileContext, PassInputError, expand_pipeline
from mpqc.passes.pipelines import DefaultPipeline, default_candidates


def _default(calibrated: bool = True, **options: object) -> str:
    """What ``default{...}`` expands to, with or without calibration data."""
    context = CompileContext(calibration=[{}] if calibrated else None, hw=hwspecs.load("x86_avx2"))
    return DefaultPipeline.expand(DefaultPipeline.Options(**options), context)


def test_uniform_bits_lower_without_a_search_and_recover_below_8_bits() -> None:
    assert _default(uniform="w4a8") == (
        "canonicalize,calibrate,recover{uniform=w4a8},lower-qdq{uniform=w4a8},verify"
    )
    assert _default(uniform="w8a8") == "canonicalize,calibrate,lower-qdq{uniform=w8a8},verify"
    assert _default(calibrated=False, uniform="w4a8") == (
        "canonicalize,lower-qdq{uniform=w4a8},verify"
    )


def test_weight_only_keeps_activations_float_and_needs_no_ranges() -> None:
    assert _default(weight_only=True, recover=False) == (
        "canonicalize,lower-qdq{uniform=w4a32,weight_only=true},verify"
    )


def test_the_search_reads_the_metric_its_strategy_and_data_allow() -> None:
    assert "cost,sensitivity-output{prune=true},search{strategy=ilp,metric=output}" in _default()
    assert "sensitivity-entropy" in _default(strategy="eagl")
    # only the ILP's answer is provably kept when unchoosable candidates go unmeasured
    assert "sensitivity-output," in _default(strategy="mohaq")
    assert "cost,sensitivity-orthogonality,search{strategy=ompq,metric=orthogonality}" in (
        _default(strategy="ompq")
    )
    assert "sensitivity-weight-error" in _default(strategy="ompq", calibrated=False)
    assert "sensitivity-weight-error" in _default(calibrated=False)
    assert "calibrate{method=mse}" in _default(calibrate_method="mse")


def test_front_points_are_lowered_by_the_compilations_own_tail() -> None:
    """--emit-pareto with a block size recovers and lowers each point on that layout, as the
    chosen one."""
    pipeline = _default(recover=True, block_size=32)
    assert after_search(pipeline) == "recover{block_size=32},lower-qdq{block_size=32},verify"


@pytest.mark.parametrize("recover", [True, False])
def test_mohaq_creates_beacons_only_when_the_model_is_recovered(recover: bool) -> None:
    """Beacons estimate errors on recovered weights: a plainly lowered model is chosen on plain
    errors."""
    pipeline = _default(strategy="mohaq", recover=recover)
    assert ("beacons=0" in pipeline) is not recover
    assert ("recover" in pipeline.split(",")) is recover


def test_a_named_pipeline_expands_in_place_among_passes() -> None:
    context = CompileContext(hw=hwspecs.load("x86_avx2"))
    assert expand_pipeline("default{uniform=w8a8},verify", context) == (
        "canonicalize,lower-qdq{uniform=w8a8},verify,verify"
    )
    assert expand_pipeline("canonicalize, verify", context) == "canonicalize, verify"


def test_options_that_cannot_go_together_fail_before_anything_runs() -> None:
    budgeted = CompileContext(hw=hwspecs.load("x86_avx2"), constraints={"size": "0.5x"})
    with pytest.raises(PassInputError, match="budgets cannot apply") as info:
        DefaultPipeline.expand(DefaultPipeline.Options(uniform="w4a8"), budgeted)
    assert info.value.field == "uniform"


def test_default_candidates_follow_the_chip() -> None:
    assert default_candidates(hwspecs.load("x86_avx2")) == ((8, 4), (8,))
    assert default_candidates(hwspecs.load("bitfusion")) == ((8, 4, 2), (8,))
    # 2-bit weights that only save bytes, offered when the budget is about bytes
    assert default_candidates(hwspecs.load("x86_avx2"), {"size": "0.15x"}) == ((8, 4, 2), (8,))
    assert default_candidates(hwspecs.load("x86_avx2"), {"latency": "2ms"}) == ((8, 4), (8,))


def test_every_default_option_is_a_compile_option_of_the_same_name() -> None:
    """``mpqc.CompileOptions`` fills ``default{...}`` field by field."""
    options = {field.name for field in dataclasses.fields(mpqc.CompileOptions)}
    assert {field.name for field in dataclasses.fields(DefaultPipeline.Options)} <= options
