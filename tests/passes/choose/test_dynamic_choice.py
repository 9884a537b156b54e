"""Dynamic activation ranges (``w8adyn``) as a per-layer choice: where a MatMul's input has
outliers, the per-run range measures less damage than the calibrated one, and the search takes it;
its plan-file line reads back as written."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import outliers

from mpqc import hwspecs
from mpqc.core.bits import Bits
from mpqc.ir import annotations, quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, PassManager, build_pipeline
from mpqc.passes.choose.plan_file import PlanError, describe, read_yaml, yaml_text
from mpqc.passes.choose.plan_ort import to_overrides
from mpqc.passes.lib.evaluator import Evaluator, output_error
from mpqc.passes.lib.layout import WeightLayout


def _samples() -> list[dict[str, np.ndarray]]:
    """Inputs at very different scales: one sample's outlier sets the calibrated range, which
    leaves the others a few levels; a range measured per run fits each."""
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(0, 1, (1, 6, 64)).astype(np.float32)} for _ in range(8)]
    samples[3]["x"][0, 2, 5] = 300.0
    return samples


@pytest.fixture(scope="module")
def searched() -> ir.Model:
    model = ir.from_proto(outliers())
    context = CompileContext(
        hw=hwspecs.load("x86_avx512_vnni"),
        calibration=CalibrationData(tuple(_samples())),
        wbits=(8, 4),
        abits=(8,),
    )
    PassManager(
        build_pipeline(
            "canonicalize,calibrate,sensitivity-output{measure=mse},cost,search{latency_cap=false}",
            context,
        )
    )(model)
    return model


def test_the_outlier_input_measures_less_damage_and_the_search_takes_the_dynamic_range(
    searched: ir.Model,
) -> None:
    first, _ = quantizable_layers(searched.graph)
    scores = annotations.sensitivity_key("output").get(first.node)
    assert scores["adyn"] < scores["a8"] / 4
    assert "w8adyn" in annotations.COST.get(first.node)
    assert annotations.chosen_bits(annotations.BITS.get(first.node)) == Bits(8, 8, dynamic=True)


def test_a_dynamic_choice_reads_back_from_its_plan_file(
    searched: ir.Model, tmp_path: pathlib.Path
) -> None:
    spec = hwspecs.load("x86_avx512_vnni")
    plan = describe(searched, WeightLayout(), spec)
    first = next(iter(plan.layers.values()))
    assert first.bits == Bits(8, 8, dynamic=True)
    assert (first.activation, first.kernel) == ("uint8 dynamic", "dynamic-integer")
    path = tmp_path / "plan.yaml"
    path.write_text(yaml_text(plan))
    _, bits = read_yaml(path)
    assert bits == {name: entry.bits for name, entry in plan.layers.items()}
    with pytest.raises(PlanError, match="quantize_dynamic's form"):
        to_overrides(plan, searched, tmp_path / "overrides.json")


def test_the_task_metric_scores_the_dynamic_range_too() -> None:
    """``sensitivity-task`` measures ``adyn`` where ``sensitivity-output`` does, on the lowered
    model: the outlier input loses less of the metric with a range measured per run."""
    proto = outliers()
    samples = _samples()
    float_session = ort.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    reference = [float_session.run(None, s) for s in samples]

    def negative_error(lowered: onnx.ModelProto) -> float:
        session = ort.InferenceSession(
            lowered.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return -output_error(reference, [session.run(None, s) for s in samples], "mse")

    model = ir.from_proto(proto)
    context = CompileContext(
        hw=hwspecs.load("x86_avx512_vnni"),
        calibration=CalibrationData(tuple(samples)),
        eval_fn=negative_error,
        wbits=(8,),
        abits=(8,),
    )
    PassManager(build_pipeline("canonicalize,calibrate,sensitivity-task", context))(model)
    first, second = (
        annotations.sensitivity_key("task").get(layer.node)
        for layer in quantizable_layers(model.graph)
    )
    assert set(first) == set(second) == {"w8", "a8", "adyn"}
    assert 0.0 <= first["adyn"] < first["a8"] / 4


def test_a_fused_pair_is_scored_as_lowered_with_its_output_quantizer(searched: ir.Model) -> None:
    """w8a8 runs as an integer kernel whose output is quantized too: the pair's score is the
    evaluator's error of that layer at w8a8 alone, not the sum of its weight and input parts."""
    first, _ = quantizable_layers(searched.graph)
    scores = annotations.sensitivity_key("output").get(first.node)
    evaluator = Evaluator(
        searched, _samples(), wbits=(8, 4), spec=hwspecs.load("x86_avx512_vnni"), batch=1
    )
    assert scores["w8a8"] == pytest.approx(evaluator.error({first.name: (8, 8)}, "mse"), rel=1e-3)
    assert scores["w8a8"] != pytest.approx(scores["w8"] + scores["a8"], rel=0.05)
    assert "w4a8" not in scores  # a 4-bit weight has no integer kernel: its parts say it all
