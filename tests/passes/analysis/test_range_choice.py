"""``calibrate{method=auto}``: per activation, the range estimator that damages the output least
(``passes/analysis/range_choice.py``), checked on the emitted model with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import mpqc
from mpqc.passes.analysis.range_choice import (
    MATERIAL,
    Choice,
    accept_jointly,
    material_candidates,
)

# x -> MatMul(W1) -> relu -> MatMul(W2) -> y; x's channel 0 carries rare spikes.
TWO_LAYERS = """
<ir_version: 10, opset_import: ["" : 17]>
twolayers (float[N,16] x) => (float[N,4] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""

SPIKE = 60.0


def model(spike_weight: float) -> onnx.ModelProto:
    """The two layers; ``spike_weight`` scales the first weight's row that reads the spiky
    channel (small: the spikes hardly matter downstream; large: they are most of the output)."""
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TWO_LAYERS)
    w1 = rng.normal(0.0, 0.3, (16, 16)).astype(np.float32)
    w1[0] *= spike_weight
    w2 = rng.normal(0.0, 0.3, (16, 4)).astype(np.float32)
    proto.graph.initializer.extend(
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    )
    return proto


def samples(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Unit Gaussian rows; channel 0 of one row of each of the first two samples spikes to
    ``SPIKE``: rarer than the 99.999th percentile keeps."""
    rng = np.random.default_rng(seed)
    out = [{"x": rng.normal(0.0, 1.0, (1024, 16)).astype(np.float32)} for _ in range(count)]
    out[0]["x"][5, 0] = out[1]["x"][7, 0] = SPIKE
    return out


def compiled(proto: onnx.ModelProto, method: str) -> mpqc.CompileResult:
    options = mpqc.CompileOptions(
        calibration=samples(40, seed=1), uniform="w8a8", calibrate_method=method
    )
    return mpqc.compile(proto, options)


def error_to_float(proto: onnx.ModelProto, lowered: onnx.ModelProto) -> float:
    """Relative squared error of the lowered model's outputs against float on held-out data."""
    run_float = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    run_lowered = ort.InferenceSession(
        lowered.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    noise = energy = 0.0
    for sample in samples(24, seed=2):
        reference = run_float.run(None, sample)[0]
        noise += float(np.sum((run_lowered.run(None, sample)[0] - reference) ** 2))
        energy += float(np.sum(reference**2))
    return noise / energy


def chosen(result: mpqc.CompileResult) -> dict[str, dict]:
    return result.report["calibrate"]["compared"]


@pytest.fixture(scope="module")
def spike_ignored() -> tuple[onnx.ModelProto, mpqc.CompileResult, mpqc.CompileResult]:
    proto = model(spike_weight=0.01)
    return proto, compiled(proto, "auto"), compiled(proto, "minmax")


def test_a_clipping_estimator_wins_where_the_outliers_do_not_matter(spike_ignored) -> None:
    proto, auto, minmax = spike_ignored
    assert chosen(auto)["x"]["method"] in ("percentile", "mse")
    assert error_to_float(proto, auto.model) < 0.5 * error_to_float(proto, minmax.model)


def test_minmax_is_kept_where_the_outliers_carry_the_output() -> None:
    proto = model(spike_weight=10.0)
    auto, minmax = compiled(proto, "auto"), compiled(proto, "minmax")
    errors = chosen(auto)["x"]["output_error"]
    assert chosen(auto)["x"]["method"] == "minmax"
    assert errors["minmax"] < min(errors["percentile"], errors["mse"])
    # the other tensors' choices make the whole model no worse than minmax everywhere
    assert error_to_float(proto, auto.model) <= error_to_float(proto, minmax.model)


def test_same_seed_same_bytes(spike_ignored) -> None:
    proto, auto, _ = spike_ignored
    assert compiled(proto, "auto").model.SerializeToString() == auto.model.SerializeToString()


def test_only_material_differences_are_compared() -> None:
    kept = material_candidates(
        {
            "minmax": (-1.0, 1.0),
            "percentile": (-1.0, 1.0 - MATERIAL),  # within 5% of the width
            "mse": (-0.5, 0.5),
        }
    )
    assert list(kept) == ["minmax", "mse"]


class _Clips:
    """An evaluator stand-in whose whole-model error depends on which tensors are clipped: each
    clip lowers it alone, "b" and "c" together with "a" raise it above minmax's."""

    layers = ("l1", "l2", "l3")

    def __init__(self) -> None:
        self.clipped: frozenset[str] = frozenset()
        self.asked: list[frozenset[str]] = []

    def set_ranges(self, ranges: dict) -> None:
        self.clipped = frozenset(ranges)

    def error(self, config: dict) -> float:
        assert config == {"l1": (8, 8), "l2": (8, 8), "l3": (8, 8)}  # judged as shipped: w8a8
        self.asked.append(self.clipped)
        return 1.0 - 0.3 * len(self.clipped) + (1.0 if {"b", "c"} <= self.clipped else 0.0)


def test_clips_that_help_alone_are_kept_only_as_far_as_they_help_together() -> None:
    candidates = {t: {"minmax": (-1.0, 1.0), "mse": (-0.5, 0.5)} for t in "abcd"}
    gains = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.0}  # "d" measured no better than minmax
    choices = {
        t: Choice("mse" if gain else "minmax", {"minmax": 1.0, "mse": 1.0 - gain})
        for t, gain in gains.items()
    }
    evaluator = _Clips()
    joined, joint = accept_jointly(evaluator, choices, candidates)
    assert {t: c.method for t, c in joined.items()} == {
        "a": "mse",
        "b": "mse",
        "c": "minmax",
        "d": "minmax",
    }
    assert joint.kept == 2 and joint.errors[0] == 1.0 and joint.errors[2] == pytest.approx(0.4)
    assert joint.errors[3] > joint.errors[0]
    assert evaluator.clipped == frozenset()  # restored to minmax


def test_the_report_shows_the_whole_model_check(spike_ignored) -> None:
    _, auto, _ = spike_ignored
    joint = auto.report["calibrate"]["joint_error"]
    assert "0" in joint and min(joint.values()) <= joint["0"]


def test_best_clips_the_whole_model_only_where_that_lowers_its_error(spike_ignored) -> None:
    """``best``: one estimator for the model, judged by the whole model's error at w8a8."""
    proto, _, minmax = spike_ignored
    best = compiled(proto, "best")
    errors = best.report["calibrate"]["model_error"]
    assert min(errors["percentile"], errors["mse"]) < errors["minmax"]
    assert error_to_float(proto, best.model) < 0.5 * error_to_float(proto, minmax.model)
    # where the spikes carry the output, clipping them all (percentile) is measured and refused
    carried = model(spike_weight=10.0)
    kept = compiled(carried, "best")
    errors = kept.report["calibrate"]["model_error"]
    assert errors["percentile"] > 2 * errors["minmax"]
    assert min(errors, key=errors.get) != "percentile"
