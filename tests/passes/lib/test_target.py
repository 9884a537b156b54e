"""Target rules that change the numbers: a spec's narrowed weight grid (x86 without VNNI).

The rule must hold in both places that turn bits into numbers — lower-qdq and the evaluator — or
the search optimizes a model that is not the one shipped.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import random_inputs, small_cnn

from mpqc import hwspecs
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext
from mpqc.passes.analysis.calibrate import CalibratePass
from mpqc.passes.lib.evaluator import Evaluator
from mpqc.passes.lib.target import weight_grid_bits
from mpqc.passes.lower.lower_qdq import LowerQDQPass


@pytest.fixture(scope="module")
def calibrated() -> tuple[ir.Model, list]:
    samples = random_inputs(small_cnn(), 4, batch=2)
    model = ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(small_cnn())))
    CalibratePass(context=CompileContext(calibration=CalibrationData(tuple(samples))))(model)
    return model, samples


def _lower(
    model: ir.Model, config: dict[str, tuple[int, int]], spec
) -> tuple[ir.Model, CompileContext]:
    copy = ir.from_proto(ir.to_proto(model))
    for layer in quantizable_layers(copy.graph):
        annotations.BITS.set(layer.node, {"w": config[layer.name][0], "a": config[layer.name][1]})
    context = CompileContext(hw=spec)
    LowerQDQPass(context=context)(copy)
    return copy, context


def _int8_weights(model: ir.Model) -> list[np.ndarray]:
    return [
        v.const_value.numpy()
        for v in model.graph.initializers.values()
        if v.const_value is not None
        and v.const_value.dtype == ir.DataType.INT8
        and v.const_value.numpy().ndim > 1
    ]


def test_rule_follows_the_spec() -> None:
    avx2, vnni, arm = (hwspecs.load(n) for n in ("x86_avx2", "x86_avx512_vnni", "arm_a72"))
    assert weight_grid_bits(avx2, 8, 8) == 7
    assert weight_grid_bits(vnni, 8, 8) == 8  # the child spec restores the full grid
    assert weight_grid_bits(arm, 8, 8) == 8
    assert weight_grid_bits(avx2, 4, 8) == 4  # emulated pairs compute in float: no saturation
    assert weight_grid_bits(None, 8, 8) == 8


def test_lowering_narrows_only_the_saturating_pair(calibrated) -> None:
    model, _ = calibrated
    names = [layer.name for layer in quantizable_layers(model.graph)]
    narrowed, context = _lower(model, {n: (8, 8) for n in names}, hwspecs.load("x86_avx2"))
    assert max(int(np.abs(w).max()) for w in _int8_weights(narrowed)) == 63
    assert any("7-bit weight grid" in note for note in context.notes)
    assert all(annotations.BITS.get(node) in (None, {"w": 8, "a": 8}) for node in narrowed.graph)
    full, context = _lower(model, {n: (8, 8) for n in names}, hwspecs.load("x86_avx512_vnni"))
    assert max(int(np.abs(w).max()) for w in _int8_weights(full)) == 127
    assert not context.notes


def test_evaluator_simulates_the_narrowed_grid(calibrated) -> None:
    model, samples = calibrated
    spec = hwspecs.load("x86_avx2")
    names = [layer.name for layer in quantizable_layers(model.graph)]
    config = {name: ((8, 8) if i % 2 == 0 else (4, 8)) for i, name in enumerate(names)}
    lowered, _ = _lower(model, config, spec)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        ir.to_proto(lowered).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    want = [session.run(None, s) for s in samples]
    got = Evaluator(model, samples, wbits=(4, 8), spec=spec).run(config)
    for g_sample, w_sample in zip(got, want, strict=True):
        for g, w in zip(g_sample, w_sample, strict=True):
            assert float(np.max(np.abs(g - w))) <= 1e-5 * max(float(np.max(np.abs(w))), 1e-12)
    # ...and it differs from the full-grid simulation, so the test can tell the two apart.
    plain = Evaluator(model, samples, wbits=(4, 8)).run(config)
    assert any(
        not np.allclose(p, g)
        for ps, gs in zip(plain, got, strict=True)
        for p, g in zip(ps, gs, strict=True)
    )


def test_spec_rejects_a_grid_wider_than_the_pair(tmp_path) -> None:
    path = tmp_path / "chip.yaml"
    path.write_text("name: chip\nbase: x86_avx2\nprecisions:\n  w8a8:\n    weight_grid_bits: 9\n")
    with pytest.raises(hwspecs.SpecError, match="weight_grid_bits"):
        hwspecs.validate(path)
