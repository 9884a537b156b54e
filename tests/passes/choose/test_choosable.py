"""Measuring only what can change the search's choice (``choosable.py``, ``sensitivity-output
{prune=true}``): under budgets the all-8-bit model meets, the lower bits and the parts every
choice shares go unmeasured, and the ILP still chooses what it chose with every score."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from models import build, random_inputs, small_cnn

from mpqc import hwspecs
from mpqc.core.bits import Bits
from mpqc.ir import annotations, quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, PassManager, build_pipeline

FULL = "canonicalize,calibrate,sensitivity-output,cost,search"
PRUNED = "canonicalize,calibrate,cost,sensitivity-output{prune=true},search"


def _run(model: ir.Model, pipeline: str, hw: str, **constraints: str) -> CompileContext:
    samples = CalibrationData(tuple(random_inputs(model, 6, batch=2)))
    context = CompileContext(
        hw=hwspecs.load(hw),
        calibration=samples,
        wbits=(8, 4, 2),
        abits=(8,),
        constraints=constraints,
    )
    PassManager(build_pipeline(pipeline, context))(model)
    return context


def _bits(model: ir.Model) -> dict[str, Bits]:
    return {
        layer.name: annotations.chosen_bits(annotations.BITS.get(layer.node))
        for layer in quantizable_layers(model.graph)
    }


def _scores(model: ir.Model) -> dict[str, dict[str, float]]:
    key = annotations.sensitivity_key("output")
    return {layer.name: key.get(layer.node) for layer in quantizable_layers(model.graph)}


@pytest.mark.parametrize("budget", [{}, {"max_size": "0.9x"}])
def test_a_budget_the_8_bit_model_meets_measures_nothing_and_chooses_as_before(
    budget: dict[str, str],
) -> None:
    full, pruned = small_cnn(), small_cnn()
    _run(full, FULL, "x86_avx2", **{k[4:]: v for k, v in budget.items()})
    context = _run(pruned, PRUNED, "x86_avx2", **{k[4:]: v for k, v in budget.items()})
    assert _bits(pruned) == _bits(full)
    assert all(bits.w == 8 for bits in _bits(pruned).values())
    # a layer left with w8a8 alone needs no score; one that may also take a dynamic range needs
    # w8a8 as lowered (its output quantizer too) against the dynamic range's weight and input
    detail, scores = annotations.detail_key("output"), _scores(pruned)
    for layer in quantizable_layers(pruned.graph):
        choosable = detail.get(layer.node)["choosable"]
        assert choosable in (["w8a8"], ["w8a8", "w8adyn"])
        expected = set() if len(choosable) == 1 else {"w8a8", "w8", "adyn"}
        assert set(scores[layer.name]) == expected
    assert any("not measured" in note and "w4" in note for note in context.notes)
    rows = annotations.REPORT.get(pruned)["search"]["layers"]
    assert all(row["reason"] for row in rows)  # each says why it kept 8 bits


def test_a_budget_that_needs_lower_bits_measures_them_and_chooses_as_before() -> None:
    full, pruned = small_cnn(), small_cnn()
    _run(full, FULL, "x86_avx2", size="0.2x", latency="1s")
    _run(pruned, PRUNED, "x86_avx2", size="0.2x", latency="1s")
    measured, everything = _scores(pruned), _scores(full)
    for name, scores in measured.items():
        assert "w4" in scores
        assert scores == {key: everything[name][key] for key in scores}
    assert _bits(pruned) == _bits(full)
    assert any(bits.w < 8 for bits in _bits(pruned).values())


OUTLIERS = """
<ir_version: 10, opset_import: ["" : 17]>
outliers (float[1,6,64] x) => (float[1,6,32] y) {
  h = MatMul(x, w1)
  t = Tanh(h)
  y = MatMul(t, w2)
}
"""


def test_a_static_and_a_dynamic_range_are_both_measured_the_static_one_as_lowered() -> None:
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(0, 1, (1, 6, 64)).astype(np.float32)} for _ in range(6)]
    samples[3]["x"][0, 2, 5] = 300.0
    chosen = []
    for pipeline in (FULL, PRUNED):
        model = ir.from_proto(build(OUTLIERS, {"w1": (64, 48), "w2": (48, 32)}))
        context = CompileContext(
            hw=hwspecs.load("x86_avx512_vnni"),
            calibration=CalibrationData(tuple(samples)),
            wbits=(8, 4),
            abits=(8,),
        )
        PassManager(build_pipeline(pipeline, context))(model)
        chosen.append(_bits(model))
    assert chosen[0] == chosen[1]
    assert Bits(8, 8, dynamic=True) in chosen[1].values()
    scores = _scores(model)
    assert all(set(layer_scores) == {"w8a8", "w8", "adyn"} for layer_scores in scores.values())
