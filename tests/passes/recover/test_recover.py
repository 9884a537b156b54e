"""The recover pass: GPTQ beats rounding, bias correction removes shifts, weights stay exactly on
the grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import build, random_inputs, small_cnn

from mpqc import hwspecs
from mpqc.core.bits import Bits
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, PassInputError
from mpqc.passes.analysis.calibrate import CalibratePass
from mpqc.passes.lib.evaluator import Evaluator
from mpqc.passes.lib.grid import fake_quant_weight, quantize_weight_blocked, weight_grid
from mpqc.passes.lib.plan import layer_plan
from mpqc.passes.lower.lower_qdq import LowerQDQPass
from mpqc.passes.recover.beacons import BeaconRecovery
from mpqc.passes.recover.exact import on_grid
from mpqc.passes.recover.gptq import gptq_levels, peak_pins
from mpqc.passes.recover.linear import linear_view
from mpqc.passes.recover.recover import RecoverPass

GEMM = """
<ir_version: 10, opset_import: ["" : 17]>
gemm (float[N,32] x) => (float[N,16] y) {
  y = Gemm <transB=1> (x, w, b)
}
"""

# A grouped and a depthwise Conv, with strides, dilation and asymmetric padding, no biases.
GROUPED = """
<ir_version: 10, opset_import: ["" : 17]>
grouped (float[N,4,9,9] x) => (float[N,8,5,4] y) {
  g = Conv <group=2, pads=[1,0,1,1], strides=[2,2]> (x, wg)
  r = Relu(g)
  y = Conv <group=8, kernel_shape=[3,3], pads=[2,2,2,2], dilations=[2,2]> (r, wd)
}
"""

MATMULS = """
<ir_version: 10, opset_import: ["" : 17]>
matmuls (float[N,6,24] x) => (float[N,6,8] y, float[N,6,8] z) {
  m = MatMul(x, w1)
  y = Add(m, b1)
  z = MatMul(x, w2)
}
"""


def _calibrated(proto: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> ir.Model:
    model = ir.from_proto(onnx.shape_inference.infer_shapes(proto))
    CalibratePass(context=CompileContext(calibration=CalibrationData(tuple(samples))))(model)
    return model


def _context(samples: list[dict[str, np.ndarray]], hw: object = None) -> CompileContext:
    return CompileContext(calibration=CalibrationData(tuple(samples)), hw=hw)


def _recovered(
    model: ir.Model, samples: list, options: str = "", hw: object = None, **overrides
) -> tuple[ir.Model, CompileContext]:
    copy = model.clone()
    context = _context(samples, hw)
    RecoverPass(context=context, **overrides)(copy)
    return copy, context


def _run(
    model: ir.Model, samples: list, lower: str | None = None, hw: object = None
) -> list[list[np.ndarray]]:
    """Outputs of ``model`` (lowered at ``lower`` bits first when given), the QDQ graph as
    written."""
    copy = model.clone()
    if lower is not None:
        LowerQDQPass(context=CompileContext(hw=hw), uniform=lower)(copy)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        ir.to_proto(copy).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return [session.run(None, s) for s in samples]


def _relative_error(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> float:
    noise = sum(
        float(np.sum((g - w) ** 2))
        for gs, ws in zip(got, want, strict=True)
        for g, w in zip(gs, ws, strict=True)
    )
    return noise / sum(float(np.sum(w**2)) for ws in want for w in ws)


def _correlated(count: int, seed: int, mean: float = 0.0) -> list[dict[str, np.ndarray]]:
    """Inputs of a Gemm layer that live near a 4-dimensional subspace: what GPTQ exploits."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).standard_normal((4, 32))
    return [
        {
            "x": (
                rng.standard_normal((16, 4)) @ basis + 0.05 * rng.standard_normal((16, 32)) + mean
            ).astype(np.float32)
        }
        for _ in range(count)
    ]


def _smooth_images(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """[2, 4, 9, 9] images made of 3x3 blocks plus a little noise: neighbouring pixels correlate, as
    in photos."""
    rng = np.random.default_rng(seed)
    blocks = [
        np.kron(rng.standard_normal((2, 4, 3, 3)), np.ones((1, 1, 3, 3))) for _ in range(count)
    ]
    return [{"x": (b + 0.1 * rng.standard_normal(b.shape)).astype(np.float32)} for b in blocks]


def _assert_on_grid(model: ir.Model, bits: int) -> None:
    for layer in quantizable_layers(model.graph):
        weight = layer.weight_array()
        assert np.array_equal(fake_quant_weight(weight, bits, layer.channel_axis), weight), (
            layer.name
        )


# --- The reconstruction ---------------------------------------------------------------------


def test_gptq_lowers_output_error_on_correlated_inputs() -> None:
    samples, held_out = _correlated(24, 1), _correlated(8, 2)
    model = _calibrated(build(GEMM, {"w": (16, 32), "b": (16,)}), samples)
    reference = _run(model, held_out)
    plain = _relative_error(_run(model, held_out, "w3a8"), reference)
    recovered, context = _recovered(model, samples, uniform="w3a8", bias_correction=False)
    gptq = _relative_error(_run(recovered, held_out, "w3a8"), reference)
    assert gptq < 0.5 * plain
    assert any("1 layers reconstructed" in note for note in context.notes)


def test_bias_correction_removes_a_known_mean_shift() -> None:
    # Inputs with a large mean: rounding the weights shifts every output channel by (W - Q) E[x].
    samples = _correlated(24, 1, mean=3.0)
    proto = build(GEMM, {"w": (16, 32), "b": (16,)})
    model = _calibrated(proto, samples)
    reference = np.concatenate([out[0] for out in _run(model, samples)]).mean(axis=0)
    plain = np.concatenate([out[0] for out in _run(model, samples, "w2a16")]).mean(axis=0)
    recovered, _ = _recovered(model, samples, uniform="w2a16", method="round")
    corrected = np.concatenate([out[0] for out in _run(recovered, samples, "w2a16")]).mean(axis=0)
    assert np.max(np.abs(plain - reference)) > 0.1
    assert np.max(np.abs(corrected - reference)) < 0.02 * np.max(np.abs(plain - reference))


def test_grouped_and_depthwise_convs_get_a_bias_and_a_smaller_error() -> None:
    proto = build(GROUPED, {"wg": (8, 2, 3, 3), "wd": (8, 1, 3, 3)})
    samples, held_out = _smooth_images(12, 1), _smooth_images(4, 2)
    model = _calibrated(proto, samples)
    reference = _run(model, held_out)
    recovered, _ = _recovered(model, samples, uniform="w3a8")
    _assert_on_grid(recovered, 3)
    assert all(len(layer.node.inputs) == 3 for layer in quantizable_layers(recovered.graph))
    assert _relative_error(_run(recovered, held_out, "w3a8"), reference) < 0.85 * _relative_error(
        _run(model, held_out, "w3a8"), reference
    )


def test_im2col_rows_reproduce_the_conv() -> None:
    proto = build(GROUPED, {"wg": (8, 2, 3, 3), "wd": (8, 1, 3, 3)})
    model = ir.from_proto(proto)
    x = random_inputs(proto, 1, batch=2)[0]["x"]
    conv = quantizable_layers(model.graph)[0]
    view = linear_view(conv)
    assert not isinstance(view, str)
    rows = view.rows(x, 10**6)  # (positions, groups, cols): every receptive field
    strided = view.rows(x, 6)  # every other position along both axes: 3 x 2 per image
    assert strided.shape == (12, 2, 18) and np.array_equal(
        strided[:6], rows.reshape(2, 5, 4, 2, 18)[0, ::2, ::2].reshape(6, 2, 18)
    )
    products = (
        np.einsum("pgc,grc->pgr", rows, view.matrix(conv.weight_array()))
        .reshape(2, 5, 4, 8)
        .transpose(0, 3, 1, 2)
    )
    truncated = onnx.helper.make_model(
        onnx.helper.make_graph(
            [proto.graph.node[0]],
            "g",
            [proto.graph.input[0]],
            [onnx.helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, None)],
            list(proto.graph.initializer),
        ),
        opset_imports=proto.opset_import,
    )
    expected = ort.InferenceSession(
        truncated.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"x": x})[0]
    np.testing.assert_allclose(products, expected, rtol=1e-4, atol=1e-4)


def test_matmul_bias_goes_into_the_following_add_or_is_noted() -> None:
    proto = build(MATMULS, {"w1": (24, 8), "b1": (8,), "w2": (24, 8)})
    samples = [{"x": s["x"] + 2.0} for s in random_inputs(proto, 8, batch=2)]
    model = _calibrated(proto, samples)
    before = model.graph.initializers["b1"].const_value.numpy().copy()
    recovered, context = _recovered(model, samples, uniform="w2a8")
    assert not np.array_equal(recovered.graph.initializers["b1"].const_value.numpy(), before)
    assert any("'z'" in note or "MatMul has no bias input" in note for note in context.notes)
    _assert_on_grid(recovered, 2)


# --- The exactness contract -----------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    bits=st.integers(2, 8),
    channels=st.integers(1, 6),
    cols=st.integers(1, 12),
    block=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
    exponent=st.floats(-9.0, 4.0),
)
def test_recovered_weights_are_a_fixed_point_of_the_grid(
    bits: int, channels: int, cols: int, block: int, seed: int, exponent: float
) -> None:
    # A MatMul weight [K, N]: channels along axis 1, blocks (when block > 0) along K, axis 0.
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((cols, channels)) * 10.0**exponent).astype(np.float32)
    weight[:, rng.integers(channels)] = 0.0  # an all-zero channel (and blocks) keep scale 1
    matrix = weight.T[None].astype(np.float64)
    inputs = rng.standard_normal((3 * cols, cols))
    qmax = weight_grid(bits).qmax
    if block:
        stored = quantize_weight_blocked(weight, bits, 0, block)[1]
        scales = np.repeat(stored.T[None].astype(np.float64), block, axis=2)[:, :, :cols]
    else:  # a clipped per-channel scale, as the clip search leaves it
        amax = np.abs(weight).max(axis=0)
        stored = np.where(amax > 0, amax / qmax * rng.uniform(0.6, 1.0), 1.0)
        scales = np.broadcast_to(stored[None, :, None], matrix.shape)
    levels = gptq_levels(
        matrix, (inputs.T @ inputs)[None], scales, qmax, peak_pins(matrix, block or cols)
    )
    result = on_grid(levels[0].T.astype(np.int64), stored, bits, 1, block, 0)
    assert result is not None
    assert np.array_equal(fake_quant_weight(result, bits, 1, block, 0), result)


def test_lowered_recovered_model_equals_the_evaluator() -> None:
    samples = random_inputs(small_cnn(), 8, batch=2)
    model = _calibrated(ir.to_proto(small_cnn()), samples)
    config = {"c1": (8, 8), "c2": (4, 8), "c3": (3, 6), "logits": (2, 8)}
    for layer in quantizable_layers(model.graph):
        annotations.BITS.set(layer.node, {"w": config[layer.name][0], "a": config[layer.name][1]})
    recovered, _ = _recovered(model, samples, max_bits=8)
    got = Evaluator(recovered, samples, wbits=(2, 3, 4, 8)).run(config)
    lowered = recovered.clone()
    LowerQDQPass(context=CompileContext())(lowered)
    want = _run(lowered, samples)
    for g_sample, w_sample in zip(got, want, strict=True):
        for g, w in zip(g_sample, w_sample, strict=True):
            assert float(np.max(np.abs(g - w))) <= 1e-5 * max(float(np.max(np.abs(w))), 1e-12)


def test_weights_are_rounded_on_the_targets_narrowed_grid() -> None:
    spec = hwspecs.load(
        "x86_avx2"
    )  # w8a8 runs on a 7-bit weight grid there (saturating int16 pairs)
    samples = random_inputs(small_cnn(), 6, batch=2)
    model = _calibrated(ir.to_proto(small_cnn()), samples)
    recovered, _ = _recovered(model, samples, hw=spec, uniform="w8a8")
    _assert_on_grid(recovered, 7)


# --- Options, errors, determinism ---------------------------------------------------------------


def test_without_data_one_clear_error() -> None:
    with pytest.raises(PassInputError, match=r"^calibration: recover needs calibration samples"):
        RecoverPass(context=CompileContext(), uniform="w4a8")(small_cnn())


def test_without_bits_one_clear_error() -> None:
    samples = random_inputs(small_cnn(), 2)
    with pytest.raises(PassInputError, match="no layer has bits; run search first"):
        RecoverPass(context=_context(samples))(small_cnn())


def test_eight_bit_layers_are_left_alone() -> None:
    samples = random_inputs(small_cnn(), 2)
    model = small_cnn()
    before = ir.to_proto(model).SerializeToString()
    result = RecoverPass(context=_context(samples), uniform="w8a8")(model)
    assert not result.modified and ir.to_proto(model).SerializeToString() == before


@pytest.mark.parametrize("inputs", ["sequential", "float"])
def test_same_seed_same_bytes(inputs: str) -> None:
    samples = random_inputs(small_cnn(), 6, batch=2)
    model = _calibrated(ir.to_proto(small_cnn()), samples)
    first, _ = _recovered(model, samples, uniform="w3a8", inputs=inputs, clip_search=True)
    second, _ = _recovered(model, samples, uniform="w3a8", inputs=inputs, clip_search=True)
    assert ir.to_proto(first).SerializeToString() == ir.to_proto(second).SerializeToString()
    assert ir.to_proto(first).SerializeToString() != ir.to_proto(model).SerializeToString()


def test_a_beacon_scores_its_own_configuration_better_than_plain_rounding() -> None:
    samples = _smooth_images(10, 3)
    proto = build(GROUPED, {"wg": (8, 2, 3, 3), "wd": (8, 1, 3, 3)})
    model = _calibrated(proto, samples)
    config = {"g": (3, 8), "y": (3, 8)}
    recovery = BeaconRecovery(model, samples, wbits=(3, 8))
    beacon = recovery.evaluator(config)
    assert beacon.error(config) < 0.8 * Evaluator(model, samples, wbits=(3, 8)).error(config)
    recovery.evaluator({"g": (8, 8), "y": (3, 8)})  # a second beacon reuses the observed statistics
    assert (
        recovery.recovered == 2
        and model.graph.initializers["wg"].const_value.numpy().tobytes()
        == proto.graph.initializer[0].raw_data
    )


# --- The front door ---------------------------------------------------------------------------


def test_compile_recovers_by_default_with_data_and_not_without(tmp_path) -> None:
    import mpqc
    from mpqc import examples
    from mpqc.cli import main

    calibration = examples.digits_calibration()[:40]
    model = str(examples.digits_model_path())
    result = mpqc.compile(
        model, mpqc.CompileOptions(hw="generic", calibration=calibration, uniform="w3a8")
    )
    assert "recover{uniform=w3a8},lower-qdq{uniform=w3a8}" in result.pipeline
    assert (
        "recover"
        not in mpqc.compile(
            model, mpqc.CompileOptions(hw="generic", calibration=calibration, uniform="w8a8")
        ).pipeline
    )
    assert (
        "recover"
        not in mpqc.compile(
            model,
            mpqc.CompileOptions(
                hw="generic", calibration=calibration, uniform="w3a8", recover=False
            ),
        ).pipeline
    )
    with pytest.raises(PassInputError, match="^recover: needs calibration data"):
        mpqc.compile(model, mpqc.CompileOptions(hw="generic", uniform="w4a8", recover=True))
    assert (
        main(
            [
                "--hw",
                "generic",
                "-o",
                str(tmp_path / "out.onnx"),
                "--uniform",
                "w4a8",
                "--recover",
                "-q",
            ]
        )
        == 0
    )
    assert examples.digits_accuracy(tmp_path / "out.onnx") > 0.95


@pytest.mark.parametrize(
    ("uniform", "layout"), [("w4a8", {"block_size": 16}), ("w4a32", {"weight_only": True})]
)
def test_blocked_layouts_are_rounded_on_their_own_grid(uniform: str, layout: dict) -> None:
    proto = build(MATMULS, {"w1": (24, 8), "b1": (8,), "w2": (24, 8)})
    samples = random_inputs(proto, 8, batch=2)
    model = _calibrated(proto, samples)
    recovered, _ = _recovered(model, samples, uniform=uniform, **layout)
    options = RecoverPass.Options(**layout)
    for layer in quantizable_layers(recovered.graph):
        weight, block = (
            layer.weight_array(),
            layer_plan(layer, 4, 8, layout=options.layout).block,
        )
        assert block and np.array_equal(fake_quant_weight(weight, 4, 1, block, 0), weight)
    lowered = recovered.clone()
    LowerQDQPass(context=CompileContext(), uniform=uniform, accuracy_level=1, **layout)(lowered)
    config = {layer.name: Bits.parse(uniform) for layer in quantizable_layers(recovered.graph)}
    got = Evaluator(
        recovered, samples, wbits=(4,), layout=dataclasses.replace(options.layout, accuracy_level=1)
    ).run(config)
    for g_sample, w_sample in zip(got, _run(lowered, samples), strict=True):
        for g, w in zip(g_sample, w_sample, strict=True):
            assert float(np.max(np.abs(g - w))) <= 1e-5 * max(float(np.max(np.abs(w))), 1e-12)
