"""Sensitivity passes: scores that rank layers the way real damage does, on models whose truth is
known.

The ranking model is an MLP built so that the right answer is not in doubt:

- ``h1`` has one outlier weight per output row (8 sigma): every channel's grid stretches to it and
  the bulk of the weights rounds to a few levels — low bits hurt it most;
- ``h2`` and ``main`` are plain Gaussian layers;
- ``h3`` holds only three values per channel ({-a, 0, a}): any grid of >= 2 bits stores it exactly;
- ``side`` feeds the output through a factor 1e-3: whatever happens to it hardly matters.
"""

from __future__ import annotations

import json
import math
import pathlib
import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from mpqc.ir.annotations import detail_key, sensitivity_key
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, DataError, PassInputError, build_pipeline
from mpqc.passes.analysis.calibrate import CalibratePass
from mpqc.passes.analysis.sensitivity_entropy import (
    SensitivityEntropyPass,
    level_counts,
    weight_entropy,
)
from mpqc.passes.analysis.sensitivity_orthogonality import (
    SensitivityOrthogonalityPass,
    centred_gram,
    layer_importance,
    orthogonality_matrix,
)
from mpqc.passes.analysis.sensitivity_output import SensitivityOutputPass
from mpqc.passes.analysis.sensitivity_task import SensitivityTaskPass
from mpqc.passes.analysis.sensitivity_weight_error import (
    SensitivityWeightErrorPass,
    weight_noise_ratios,
)
from mpqc.passes.lib.evaluator import Evaluator, output_error
from mpqc.passes.lib.grid import fake_quant_weight, quantize_weight, weight_grid

RANKING = """
<ir_version: 10, opset_import: ["" : 17]>
ranking (float[N,256] x) => (float[N,16] y) {
  h1 = Gemm <transB=1> (x, w_outlier, b1)
  r1 = Relu(h1)
  h2 = Gemm <transB=1> (r1, w_normal, b2)
  r2 = Relu(h2)
  h3 = Gemm <transB=1> (r2, w_ternary, b3)
  r3 = Relu(h3)
  main = Gemm <transB=1> (r3, w_head, b5)
  side = Gemm <transB=1> (r3, w_side, b4)
  small = Mul(side, eps)
  y = Add(main, small)
}
"""
LAYERS = ["h1", "h2", "h3", "main", "side"]


def ranking_model(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    n = 256

    def gaussian(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, math.sqrt(2 / cols), (rows, cols)).astype(np.float32)

    outlier = gaussian(n, n)
    outlier[np.arange(n), rng.integers(0, n, n)] = 8 * math.sqrt(2 / n) * rng.choice([-1.0, 1.0], n)
    ternary = (1.5 * math.sqrt(2 / n) * rng.choice([-1.0, 0.0, 1.0], (n, n))).astype(np.float32)
    arrays = {
        "w_outlier": outlier,
        "w_normal": gaussian(n, n),
        "w_ternary": ternary,
        "w_head": gaussian(16, n),
        "w_side": gaussian(16, n),
        "b1": np.full(n, 0.01, np.float32),
        "b2": np.full(n, 0.01, np.float32),
        "b3": np.full(n, 0.01, np.float32),
        "b4": np.zeros(16, np.float32),
        "b5": np.zeros(16, np.float32),
        "eps": np.array(1e-3, np.float32),
    }
    proto = onnx.parser.parse_model(RANKING)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in arrays.items())
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


@pytest.fixture(scope="module")
def ranking() -> tuple[ir.Model, list[dict[str, np.ndarray]], CompileContext]:
    """The calibrated ranking model, its samples, and a context whose task metric is -output
    error."""
    model = ranking_model()
    rng = np.random.default_rng(5)
    samples = [{"x": rng.standard_normal((4, 256)).astype(np.float32)} for _ in range(8)]
    reference = Evaluator(model, samples).reference

    def negative_error(proto: onnx.ModelProto) -> float:
        import onnxruntime as ort

        session = ort.InferenceSession(
            proto.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return -output_error(reference, [session.run(None, s) for s in samples], "mse")

    context = CompileContext(calibration=CalibrationData(tuple(samples)), eval_fn=negative_error)
    CalibratePass(context=context)(model)
    return model, samples, context


def scores_of(model: ir.Model, metric: str) -> dict[str, dict[str, float]]:
    key = sensitivity_key(metric)
    return {layer.name: key.get(layer.node) for layer in quantizable_layers(model.graph)}


def _ranked(scores: dict[str, dict[str, float]], candidate: str) -> list[str]:
    return sorted(scores, key=lambda name: -scores[name][candidate])


# --- EAGL entropy ---------------------------------------------------------------------------------


def test_entropy_of_three_well_separated_values_is_log2_3_at_every_width() -> None:
    rng = np.random.default_rng(0)
    weight = np.tile(
        np.array([-0.7, 0.0, 0.7], np.float32), (16, 30)
    )  # each channel: 10 of each value
    rng.shuffle(weight, axis=1)
    for bits in (2, 3, 4, 8, 16):
        assert weight_entropy(weight, bits, 0) == pytest.approx(math.log2(3), abs=1e-12)


def test_entropy_of_uniform_weights_is_about_b_bits() -> None:
    weight = np.random.default_rng(1).uniform(-1, 1, (8, 200_000)).astype(np.float32)
    # 2 bits: levels {-1, 0, 1} take 1/4, 1/2, 1/4 of a uniform distribution.
    assert weight_entropy(weight, 2, 0) == pytest.approx(1.5, abs=0.01)
    for bits in (4, 6, 8):
        assert bits - 0.15 < weight_entropy(weight, bits, 0) <= bits


def test_entropy_of_constant_weights_is_zero() -> None:
    weight = np.full((4, 9), 0.3, np.float32)
    assert all(weight_entropy(weight, b, 0) == 0.0 for b in (2, 4, 8))
    assert weight_entropy(np.zeros((4, 9), np.float32), 4, 0) == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_level_counts_are_the_stored_integers(axis: int) -> None:
    weight = np.random.default_rng(2).standard_normal((6, 5, 7)).astype(np.float32)
    weight[(slice(None),) * axis + (0,)] = 0.0  # an all-zero channel
    bits = (2, 3, 4, 5, 8, 16)
    for b, counts in zip(bits, level_counts(weight, bits, axis), strict=True):
        q, _ = quantize_weight(weight, b, axis)
        grid = weight_grid(b)
        np.testing.assert_array_equal(
            counts, np.bincount(q.astype(np.int64).ravel() - grid.qmin, minlength=grid.levels)
        )


def test_entropy_pass_scores_and_side_field(ranking) -> None:
    model, _, context = ranking
    SensitivityEntropyPass(context=context)(model)
    scores = scores_of(model, "entropy")
    for b in (2, 3, 4):
        assert _ranked(scores, f"w{b}")[0] == "h1"
        assert scores["h3"][f"w{b}"] == 0.0
    assert all(s["w8"] == 0.0 for s in scores.values())  # the highest candidate loses nothing
    detail = detail_key("entropy").get(quantizable_layers(model.graph)[2].node)
    assert detail["params"] == 256 * 256 and detail["H"]["w2"] == pytest.approx(
        math.log2(3), abs=0.01
    )


def test_entropy_score_variants(ranking) -> None:
    model, _, context = ranking
    SensitivityEntropyPass(context=context, score="params")(model)
    by_params = scores_of(model, "entropy")
    SensitivityEntropyPass(context=context, score="absolute")(model)
    absolute = scores_of(model, "entropy")
    assert by_params["h1"]["w4"] == pytest.approx(256 * 256 * absolute["h1"]["w4"], rel=1e-5)
    assert by_params["main"]["w4"] == pytest.approx(16 * 256 * absolute["main"]["w4"], rel=1e-5)


# --- Weight error ---------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_weight_noise_ratios_are_the_fake_quant_error(axis: int) -> None:
    rng = np.random.default_rng(axis)
    weight = (rng.standard_t(3, (6, 5, 3, 7)) * rng.uniform(0.1, 3.0, (6, 1, 1, 1))).astype(
        np.float32
    )
    ratios = weight_noise_ratios(weight, (2, 3, 4, 8), axis)
    for b, ratio in zip((2, 3, 4, 8), ratios, strict=True):
        error = weight.astype(np.float64) - fake_quant_weight(weight, b, axis).astype(np.float64)
        assert ratio == pytest.approx(
            float(np.sum(error**2) / np.sum(weight.astype(np.float64) ** 2)), rel=1e-5
        )
    assert weight_noise_ratios(np.zeros((3, 4), np.float32), (2, 8), 0) == [0.0, 0.0]


def test_weight_error_ranks_outlier_layer_first(ranking) -> None:
    model, _, context = ranking
    SensitivityWeightErrorPass(context=context)(model)
    scores = scores_of(model, "weight-error")
    for b in (2, 3, 4, 8):
        assert _ranked(scores, f"w{b}")[0] == "h1"
        assert scores["h3"][f"w{b}"] == 0.0
    for s in scores.values():  # more bits, less noise
        assert s["w2"] >= s["w3"] >= s["w4"] >= s["w8"]
    sqnr = detail_key("weight-error").get(quantizable_layers(model.graph)[1].node)["sqnr_db"]
    assert sqnr["w8"] == pytest.approx(10 * math.log10(1 / scores["h2"]["w8"]), rel=1e-4)


# --- Output perturbation and task metric ---------------------------------------------------------


@pytest.mark.parametrize(
    "metric,pass_class", [("output", SensitivityOutputPass), ("task", SensitivityTaskPass)]
)
def test_data_driven_metrics_rank_outlier_first_and_side_path_last(
    ranking, metric: str, pass_class: type
) -> None:
    model, _, context = ranking
    pass_class(context=context)(model)
    scores = scores_of(model, metric)
    assert set(scores["h1"]) == {"w2", "w3", "w4", "w8", "a4", "a8"}
    for b in (3, 4, 8):
        order = _ranked(scores, f"w{b}")
        assert order[0] == "h1" and order[-1] in ("h3", "side")
        assert abs(scores["h3"][f"w{b}"]) < 1e-9  # the ternary layer is stored exactly
        assert scores["side"][f"w{b}"] < 1e-4 * scores["h1"][f"w{b}"]
    for name in LAYERS:
        assert scores[name]["a4"] > scores[name]["a8"] >= 0
    assert _ranked(scores, "a4")[-1] == "side"


def test_output_measures_and_determinism(ranking) -> None:
    model, _, context = ranking
    SensitivityOutputPass(context=context, measure="mse", wbits=(2, 4))(model)
    first = scores_of(model, "output")
    SensitivityOutputPass(context=context, measure="mse", wbits=(2, 4))(model)
    assert scores_of(model, "output") == first
    SensitivityOutputPass(context=context, measure="flips", wbits=(2,), abits=(4,))(model)
    flips = scores_of(model, "output")
    assert all(0.0 <= v <= 1.0 for s in flips.values() for v in s.values())
    assert flips["side"] == {"w2": 0.0, "a4": 0.0}


def test_candidates_are_intersected_with_user_and_spec(ranking) -> None:
    model, _, context = ranking
    user = CompileContext(calibration=context.calibration, wbits=(4, 6, 16), abits=(8,))
    SensitivityOutputPass(context=user)(model)  # default options follow the user's candidates
    assert set(scores_of(model, "output")["h2"]) == {"w4", "w6", "w16", "a8"}
    SensitivityOutputPass(context=user, wbits=(2, 4, 8))(model)  # explicit options are intersected
    assert set(scores_of(model, "output")["h2"]) == {"w4", "a8"}

    class Spec:
        weight_bits = (8,)
        act_bits = (8,)

    with pytest.raises(PassInputError, match="no weight bit-width left"):
        SensitivityWeightErrorPass(context=CompileContext(wbits=(4,), hw=Spec()))(model)


# --- OMPQ orthogonality ---------------------------------------------------------------------------


def test_orthogonality_matrix_properties() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((32, d)) for d in (20, 30, 40))
    orm = orthogonality_matrix([centred_gram(x) for x in (a, b, c)])
    np.testing.assert_allclose(orm, orm.T)
    np.testing.assert_allclose(np.diag(orm), 1.0)
    rotation, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    moved = orthogonality_matrix([centred_gram(x) for x in (7.5 * a @ rotation, b, c)])
    np.testing.assert_allclose(
        moved, orm, atol=1e-10
    )  # isotropic scaling and rotation of one layer
    duplicated = orthogonality_matrix([centred_gram(a), centred_gram(np.hstack([a, a]) * 3)])
    assert duplicated[0, 1] == pytest.approx(1.0, abs=1e-9)


def test_orthogonality_of_independent_features_depends_on_samples_per_dimension() -> None:
    rng = np.random.default_rng(1)
    many_samples = [centred_gram(rng.standard_normal((1200, 2))) for _ in range(2)]
    assert orthogonality_matrix(many_samples)[0, 1] < 0.02
    # Linear CKA's known bias: with far more dimensions than samples, independent features look
    # alike.
    wide = [centred_gram(rng.standard_normal((16, 5000))) for _ in range(2)]
    assert orthogonality_matrix(wide)[0, 1] > 0.9


def test_layer_importance_is_the_paper_formula_rescaled() -> None:
    orm = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    gamma, theta, w = layer_importance(orm, beta=2.0)
    np.testing.assert_allclose(gamma, [1.0, 1.1, 0.3])
    paper = np.exp(-2.0 * gamma)
    np.testing.assert_allclose(theta / theta.max(), paper / paper.max())
    np.testing.assert_allclose(w, [theta.mean(), theta[1:].mean(), theta[2]])
    assert (
        np.all(np.isfinite(layer_importance(orm, beta=1e4)[2]))
        and layer_importance(orm, beta=1e4)[2][-1] == 1.0
    )


ORTHO = """
<ir_version: 10, opset_import: ["" : 17]>
ortho (float[1,8] x, float[1,8] z) => (float[1,3] a, float[1,3] b, float[1,3] c) {
  a = MatMul(x, wa)
  b = MatMul(x, wb)
  c = MatMul(z, wc)
}
"""


def test_orthogonality_pass_gives_unique_features_the_highest_damage() -> None:
    rng = np.random.default_rng(3)
    wa = rng.standard_normal((8, 3)).astype(np.float32)
    proto = onnx.parser.parse_model(ORTHO)
    for name, array in (
        ("wa", wa),
        ("wb", -2.0 * wa),
        ("wc", rng.standard_normal((8, 3)).astype(np.float32)),
    ):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    model = ir.from_proto(proto)
    samples = [
        {
            "x": rng.standard_normal((1, 8)).astype(np.float32),
            "z": rng.standard_normal((1, 8)).astype(np.float32),
        }
        for _ in range(64)
    ]
    SensitivityOrthogonalityPass(
        context=CompileContext(calibration=CalibrationData(tuple(samples))), beta=5.0
    )(model)
    layers = quantizable_layers(model.graph)
    detail = {layer.name: detail_key("orthogonality").get(layer.node) for layer in layers}
    assert (
        detail["a"]["gamma"] == pytest.approx(detail["b"]["gamma"]) and detail["a"]["gamma"] > 1.0
    )
    assert detail["c"]["theta"] > 10 * detail["a"]["theta"]
    scores = scores_of(model, "orthogonality")
    assert _ranked(scores, "w2")[0] == "c"
    assert scores["c"]["w8"] == 0.0 and scores["c"]["w2"] > scores["c"]["w4"] > 0


TIME_MAJOR = """
<ir_version: 10, opset_import: ["" : 17]>
time_major (float[T,1,8] x) => (float[T,1,3] a, float[T,1,3] b) {
  a = MatMul(x, wa)
  b = MatMul(x, wb)
}
"""


def test_orthogonality_pools_a_leading_axis_that_varies_between_samples() -> None:
    """A time-major sequence ([T, batch, features], as in ddddocr's LSTM and the Gemm behind it)
    varies on its leading axis; its features are compared averaged over time."""
    rng = np.random.default_rng(5)
    proto = onnx.parser.parse_model(TIME_MAJOR)
    for name in ("wa", "wb"):
        weight = rng.standard_normal((8, 3)).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, name))
    model = ir.from_proto(proto)
    samples = [{"x": rng.standard_normal((3 + i % 4, 1, 8)).astype(np.float32)} for i in range(32)]
    SensitivityOrthogonalityPass(
        context=CompileContext(calibration=CalibrationData(tuple(samples)))
    )(model)
    scores = scores_of(model, "orthogonality")
    assert scores["a"]["w2"] > scores["a"]["w4"] > scores["a"]["w8"] == 0.0


# --- Errors ---------------------------------------------------------------------------------------

ALL_PASSES = [
    SensitivityEntropyPass,
    SensitivityWeightErrorPass,
    SensitivityOutputPass,
    SensitivityOrthogonalityPass,
    SensitivityTaskPass,
]


NO_LAYERS = """
<ir_version: 10, opset_import: ["" : 17]>
plain (float[1,4] x) => (float[1,4] y) {
  y = Relu(x)
}
"""


@pytest.mark.parametrize("pass_class", ALL_PASSES)
def test_model_without_layers_is_one_line_error(pass_class: type) -> None:
    model = ir.from_proto(onnx.parser.parse_model(NO_LAYERS))
    with pytest.raises(PassInputError, match="no quantizable layer") as info:
        pass_class()(model)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("pass_class", ALL_PASSES)
def test_non_finite_weights_are_one_line_error(ranking, pass_class: type, value: float) -> None:
    _, _, context = ranking
    model = ranking_model()
    layer = quantizable_layers(model.graph)[1]
    array = layer.weight_array().copy()
    array[0, 0] = value
    layer.weight.const_value = ir.tensor(array, name=layer.weight.name)
    with pytest.raises(PassInputError, match="layer 'h2' has NaN or Inf") as info:
        pass_class(context=context)(model)
    assert "\n" not in str(info.value)


def _bad_samples(kind: str) -> list[dict[str, np.ndarray]]:
    good = np.zeros((4, 256), np.float32)
    if kind == "name":
        return [{"input": good}]
    if kind == "shape":
        return [{"x": np.zeros((4, 255), np.float32)}]
    if kind == "dtype":
        return [{"x": good.astype(np.float64)}]
    broken = good.copy()
    broken[1, 2] = np.nan if kind == "nan" else -np.inf
    return [{"x": good}, {"x": broken}]


BAD_DATA = {
    "name": "do not match the model's",
    "shape": "the model wants [N,256]",
    "dtype": "is float64, the model wants float32",
    "nan": "contains NaN or Inf",
    "inf": "contains NaN or Inf",
}


@pytest.mark.parametrize("kind", sorted(BAD_DATA))
@pytest.mark.parametrize("pass_class", [SensitivityOutputPass, SensitivityOrthogonalityPass])
def test_bad_calibration_data_is_one_line_data_error(pass_class: type, kind: str) -> None:
    context = CompileContext(calibration=CalibrationData(tuple(_bad_samples(kind)), source="bad"))
    with pytest.raises(DataError, match=re.escape(BAD_DATA[kind])) as info:
        pass_class(context=context)(ranking_model())
    assert "\n" not in str(info.value) and str(info.value).startswith("bad, sample ")


def test_missing_inputs_and_failing_metric_are_one_line_errors(ranking) -> None:
    model, _, context = ranking
    with pytest.raises(PassInputError, match="needs calibration samples"):
        SensitivityOutputPass()(model)
    with pytest.raises(PassInputError, match="needs a task metric"):
        SensitivityTaskPass()(model)

    def broken(proto: onnx.ModelProto) -> float:
        raise RuntimeError("dataset not found\nsecond line")

    with pytest.raises(
        PassInputError,
        match="evaluation function failed on the float model: RuntimeError: dataset not found$",
    ):
        SensitivityTaskPass(context=CompileContext(eval_fn=broken))(model)
    with pytest.raises(PassInputError, match="returned nan"):
        SensitivityTaskPass(context=CompileContext(eval_fn=lambda proto: float("nan")))(model)


# --- Pipelines and the command line ---------------------------------------------------------------


def test_pipeline_string_options() -> None:
    passes = build_pipeline(
        "sensitivity-entropy{wbits=[2,4],score=params},sensitivity-output{measure=kl,abits=[8]}",
        CompileContext(),
    )
    assert passes[0].options.wbits == (2, 4) and passes[0].options.score == "params"
    assert passes[1].options.abits == (8,) and passes[1].options.measure == "kl"
    with pytest.raises(PassInputError):
        build_pipeline("sensitivity-output{measure=l1}", CompileContext())


def test_mpqc_opt_writes_scores_to_report_and_ir_dump(
    cnn_path: pathlib.Path, calib_dir: pathlib.Path, tmp_path: pathlib.Path, capsys
) -> None:
    from mpqc.tools.opt import main

    report = tmp_path / "s.json"
    code = main(
        [
            str(cnn_path),
            "-p",
            "calibrate,sensitivity-output",
            "--report-json",
            str(report),
            "--calib",
            str(calib_dir),
            "--print-ir-after=sensitivity-output",
        ]
    )
    assert code == 0
    nodes = json.loads(report.read_text())["nodes"]
    scores = {
        name: props["mpqc.sens.output"]
        for name, props in nodes.items()
        if "mpqc.sens.output" in props
    }
    assert set(scores) == {"c1", "c2", "c3", "logits"}
    assert all(set(s) == {"w2", "w3", "w4", "w8", "a4", "a8"} for s in scores.values())
    assert all(s["w2"] > s["w8"] for s in scores.values())
    dump = capsys.readouterr().err
    assert "IR Dump After sensitivity-output" in dump and "mpqc.sens.output" in dump


def _broken_cnn(path: pathlib.Path, kind: str) -> pathlib.Path:
    """The test CNN with a NaN in its first weight, or a model with no quantizable layer."""
    from models import small_cnn

    if kind == "no-layer":
        text = (
            '<ir_version: 10, opset_import: ["" : 17]>\n'
            "plain (float[N,3,8,8] image) => (float[N,3,8,8] y) {\n"
            "  y = Relu(image)\n"
            "}"
        )
        model = ir.from_proto(onnx.parser.parse_model(text))
    else:
        model = small_cnn()
        layer = quantizable_layers(model.graph)[0]
        array = layer.weight_array().copy()
        array.flat[0] = np.nan
        layer.weight.const_value = ir.tensor(array, name=layer.weight.name)
    ir.save(model, path)
    return path


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("nan-weight", "has NaN or Inf in its weight"),
        ("no-layer", "the model has no quantizable layer"),
        ("nan-data", "contains NaN or Inf"),
        ("wrong-name", "do not match the model's"),
    ],
)
@pytest.mark.parametrize(
    "pipeline", ["sensitivity-entropy", "calibrate,sensitivity-output", "sensitivity-orthogonality"]
)
def test_mpqc_opt_bad_input_is_one_line_and_writes_nothing(
    cnn_path: pathlib.Path,
    calib_dir: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys,
    case: str,
    fragment: str,
    pipeline: str,
) -> None:
    from mpqc.tools.opt import main

    model = (
        _broken_cnn(tmp_path / "broken.onnx", case)
        if case in ("nan-weight", "no-layer")
        else cnn_path
    )
    if case in ("nan-data", "wrong-name"):
        sample = dict(np.load(sorted(calib_dir.iterdir())[0]))
        if case == "nan-data":
            sample["image"][0, 0, 0, 0] = np.nan
        else:
            sample = {"pixels": sample["image"]}
        np.savez(calib_dir / "zz_bad.npz", **sample)
    out = tmp_path / "out"
    out.mkdir()
    code = main(
        [
            str(model),
            "-p",
            pipeline,
            "--calib",
            str(calib_dir),
            "-o",
            str(out / "m.onnx"),
            "--report-json",
            str(out / "s.json"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 1 and len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err
    ), err
    assert list(out.iterdir()) == []


def test_class_measures_need_a_fixed_class_axis() -> None:
    rng = np.random.default_rng(0)
    text = (
        '<ir_version: 10, opset_import: ["" : 17]>\n'
        "seq (float[1,S,4] x) => (float[1,S] y) {\n"
        "  h = MatMul(x, w)\n"
        "  y = ReduceSum <keepdims=0> (h, axes)\n"
        "}"
    )
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
            onnx.numpy_helper.from_array(np.array([2], np.int64), "axes"),
        ]
    )
    context = CompileContext(
        calibration=CalibrationData(
            tuple({"x": rng.standard_normal((1, s, 4)).astype(np.float32)} for s in (2, 5))
        )
    )
    with pytest.raises(
        PassInputError,
        match=r"measure=kl compares the first output's last axis as classes, but its width varies "
        r"with the input \(2, 5\); use measure=mse",
    ):
        SensitivityOutputPass(context=context, measure="kl")(ir.from_proto(proto))
    model = ir.from_proto(proto)
    SensitivityOutputPass(context=context)(model)  # auto picks mse
    assert detail_key("output").get(quantizable_layers(model.graph)[0].node)["measure"] == "mse"


def test_orthogonality_pools_axes_that_follow_the_input() -> None:
    rng = np.random.default_rng(4)
    text = (
        '<ir_version: 10, opset_import: ["" : 17]>\n'
        "seq (float[1,S,4] x) => (float[1,S,3] a, float[1,S,3] c) {\n"
        "  a = MatMul(x, wa)\n"
        "  b = MatMul(x, wb)\n"
        "  c = Relu(b)\n"
        "}"
    )
    proto = onnx.parser.parse_model(text)
    wa = rng.standard_normal((4, 3)).astype(np.float32)
    proto.graph.initializer.extend(
        [onnx.numpy_helper.from_array(wa, "wa"), onnx.numpy_helper.from_array(-3 * wa, "wb")]
    )
    model = ir.from_proto(proto)
    samples = tuple(
        {"x": rng.standard_normal((1, s, 4)).astype(np.float32)} for s in (2, 5, 3, 7, 4, 6)
    )
    SensitivityOrthogonalityPass(context=CompileContext(calibration=CalibrationData(samples)))(
        model
    )
    detail = {
        layer.name: detail_key("orthogonality").get(layer.node)
        for layer in quantizable_layers(model.graph)
    }
    assert detail["a"]["rows"] == detail["b"]["rows"] == 6  # one pooled feature row per sentence
    assert detail["a"]["gamma"] == pytest.approx(1.0)  # b = -3a: the same features up to scale
