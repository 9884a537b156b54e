"""The ``calibrate`` pass: observed ranges, clip methods, variable shapes, data errors,
persistence."""

from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpqc.ir
from mpqc.ir import annotations
from mpqc.ir.annotations import CALIB_RANGE
from mpqc.passes import (
    CalibrationData,
    CompileContext,
    DataError,
    PassInputError,
    format_pipeline,
    resolve_pipeline,
)
from mpqc.passes.analysis.calibrate import NO_DATA_NOTE, CalibratePass
from mpqc.passes.analysis.clip_range import (
    entropy_clip,
    kl_threshold_bins,
    mse_clip,
    percentile_clip,
)

# x -> a = 2x -> r = relu(a) -> n = -r -> y = n + x, plus a Constant (a weight, not an activation)
# and an int64 Shape output (not a float tensor). W is symbolic so samples may differ in width.
CHAIN = """
<ir_version: 10, opset_import: ["" : 17]>
chain (float[1,3,W] x) => (float[1,3,W] y, int64[3] s) {
  two = Constant <value = float {2.0}> ()
  a = Mul(x, two)
  r = Relu(a)
  n = Neg(r)
  y = Add(n, x)
  s = Shape(x)
}
"""

# relu(x) feeds log, which is -inf wherever x <= 0.
LOG_OF_RELU = """
<ir_version: 10, opset_import: ["" : 17]>
logrelu (float[1,N] x) => (float[1,N] y) {
  r = Relu(x)
  y = Log(r)
}
"""


def chain_model() -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(CHAIN))


def chain_tensors(x: np.ndarray) -> dict[str, np.ndarray]:
    """The chain's activations, computed by hand."""
    a = 2 * x
    r = np.maximum(a, 0)
    n = -r
    return {"x": x, "a": a, "r": r, "n": n, "y": n + x}


def samples(*arrays: np.ndarray) -> CalibrationData:
    return CalibrationData(
        tuple({"x": array.astype(np.float32)} for array in arrays), source="test data"
    )


def run(
    model: ir.Model, data: CalibrationData | None, **options: object
) -> tuple[ir.passes.PassResult, CompileContext]:
    context = CompileContext(calibration=data)
    return CalibratePass(context=context, **options)(model), context


def ranges(model: ir.Model) -> dict[str, dict]:
    values = [*model.graph.inputs, *(out for node in model.graph for out in node.outputs)]
    return {v.name: CALIB_RANGE.get(v) for v in values if CALIB_RANGE.has(v)}


def heavy_tailed(rng: np.random.Generator, width: int) -> np.ndarray:
    """A [1, 3, width] sample of unit Laplace noise with five outliers 40 to 50 scales out."""
    x = rng.laplace(0.0, 1.0, 3 * width)
    outliers = rng.choice(x.size, 5, replace=False)
    x[outliers] = rng.choice([-1.0, 1.0], 5) * rng.uniform(40.0, 50.0, 5)
    return x.reshape(1, 3, width)


def quantization_mse(values: np.ndarray, lo: float, hi: float, bits: int) -> float:
    """Mean squared error of ``values`` on the asymmetric grid lowering builds for [lo, hi]."""
    top = 2**bits - 1
    low, high = min(lo, 0.0), max(hi, 0.0)
    scale = (high - low) / top
    zero_point = np.round(-low / scale)
    restored = (np.clip(np.round(values / scale) + zero_point, 0, top) - zero_point) * scale
    return float(np.mean((np.clip(restored, lo, hi) - values) ** 2))


def relative_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


# --- minmax -----------------------------------------------------------------------------------


def test_minmax_matches_numpy_extremes_over_samples_of_different_widths() -> None:
    rng = np.random.default_rng(0)
    xs = [rng.normal(0.0, 1.0, (1, 3, 5)), rng.normal(0.5, 2.0, (1, 3, 11))]
    model = chain_model()
    result, _ = run(model, samples(*xs))
    assert result.modified

    found = ranges(model)
    assert set(found) == {"x", "a", "r", "n", "y"}  # no Constant output, no int64 Shape output
    for name in found:
        pooled = np.concatenate([chain_tensors(x.astype(np.float32))[name].ravel() for x in xs])
        entry = found[name]
        assert relative_close(entry["min"], float(pooled.min())), name
        assert relative_close(entry["max"], float(pooled.max())), name
        assert (entry["lo"], entry["hi"]) == (entry["min"], entry["max"])
        assert entry["method"] == "minmax" and entry["samples"] == 2


def test_convolution_over_text_lines_of_different_widths() -> None:
    model = ir.from_proto(
        onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        line (float[1,1,1,W] x) => (float[1,1,1,1] y) {
          k = Constant <value = float[1,1,1,3] {1.0, -2.0, 0.5}> ()
          c = Conv(x, k)
          y = GlobalAveragePool(c)
        }
    """)
    )
    rng = np.random.default_rng(7)
    lines = [rng.normal(size=(1, 1, 1, width)).astype(np.float32) for width in (16, 41, 5)]
    run(model, samples(*lines), method="percentile")

    convolved = np.concatenate(
        [np.correlate(line.ravel(), [1.0, -2.0, 0.5], mode="valid") for line in lines]
    )
    pooled = np.array(
        [np.correlate(line.ravel(), [1.0, -2.0, 0.5], mode="valid").mean() for line in lines]
    )
    found = ranges(model)
    assert relative_close(found["c"]["min"], convolved.min()) and relative_close(
        found["c"]["max"], convolved.max()
    )
    assert relative_close(found["y"]["min"], pooled.min()) and relative_close(
        found["y"]["max"], pooled.max()
    )


def test_constant_activations_are_recorded() -> None:
    model = chain_model()
    run(model, samples(np.full((1, 3, 4), -1.5), np.full((1, 3, 2), -1.5)), method="entropy")
    r = ranges(model)["r"]  # relu of a negative constant: always zero
    assert (r["min"], r["max"], r["lo"], r["hi"]) == (0.0, 0.0, 0.0, 0.0)


# --- percentile -------------------------------------------------------------------------------


def test_percentile_matches_numpy_within_a_bin_width() -> None:
    rng = np.random.default_rng(1)
    xs = [heavy_tailed(rng, 10000), heavy_tailed(rng, 5700)]
    model = chain_model()
    run(model, samples(*xs), method="percentile", percentile=99.9, bins=2048)

    found = ranges(model)
    for name in ("x", "a", "r", "y"):
        pooled = np.concatenate(
            [chain_tensors(x.astype(np.float32))[name].ravel() for x in xs]
        ).astype(np.float64)
        entry = found[name]
        width = (pooled.max() - pooled.min()) / 2048
        assert entry["min"] <= entry["lo"] <= entry["hi"] <= entry["max"]
        assert entry["hi"] - entry["lo"] < entry["max"] - entry["min"]
        assert abs(entry["hi"] - np.percentile(pooled, 99.9)) <= width, name
        if pooled.min() >= 0:  # one-sided: only the upper tail is cut
            assert entry["lo"] == entry["min"]
        else:
            assert abs(entry["lo"] - np.percentile(pooled, 0.1)) <= width, name


# --- entropy and mse --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "at_most"), [("entropy", 0.5), ("mse", 0.99)])
def test_clipping_methods_shrink_heavy_tails_and_keep_uniform_ranges(
    method: str, at_most: float
) -> None:
    rng = np.random.default_rng(2)
    xs = [heavy_tailed(rng, 13000), heavy_tailed(rng, 8000)]
    heavy = chain_model()
    run(heavy, samples(*xs), method=method)
    for name in ("x", "r"):
        entry = ranges(heavy)[name]
        assert entry["min"] <= entry["lo"] <= entry["hi"] <= entry["max"]
        assert entry["hi"] - entry["lo"] < at_most * (entry["max"] - entry["min"]), (name, entry)
        if method == "mse":  # the clip pays off on the actual values, not only on the histogram
            pooled = np.concatenate(
                [chain_tensors(x.astype(np.float32))[name].ravel() for x in xs]
            ).astype(np.float64)
            clipped = quantization_mse(pooled, entry["lo"], entry["hi"], 8)
            assert clipped < quantization_mse(pooled, entry["min"], entry["max"], 8)
    assert ranges(heavy)["r"]["lo"] == 0.0  # non-negative tensor: clipped on top only

    uniform = chain_model()
    run(
        uniform,
        samples(rng.uniform(-1, 1, (1, 3, 20000)), rng.uniform(-1, 1, (1, 3, 9000))),
        method=method,
    )
    for name in ("x", "r"):
        entry = ranges(uniform)[name]
        assert entry["hi"] - entry["lo"] > 0.97 * (entry["max"] - entry["min"]), (name, entry)


def reference_kl_threshold_bins(hist: np.ndarray, levels: int) -> int:
    """The textbook per-candidate loop that the vectorized search must reproduce."""
    counts = hist.astype(np.float64)
    best_kl, best_bins = math.inf, counts.size
    for i in range(levels, counts.size + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        nonzero = p > 0
        q = np.zeros(i)
        for g in range(levels):
            start, stop = -(-g * i // levels), -(-(g + 1) * i // levels)
            spread = nonzero[start:stop].sum()
            if spread:
                q[start:stop][nonzero[start:stop]] = counts[start:stop].sum() / spread
        p_hat = p[nonzero] / p.sum()
        q_hat = np.maximum(q[nonzero] / max(q.sum(), 1.0), 1e-12)
        kl = float(np.sum(p_hat * np.log(p_hat / q_hat)))
        if kl < best_kl - 1e-12:
            best_kl, best_bins = kl, i
    return best_bins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_kl_search_equals_the_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    magnitudes = [
        np.abs(rng.laplace(0, 1, 20000)),
        rng.uniform(0, 1, 5000),
        np.append(np.abs(rng.normal(0, 1, 3000)), 40.0),
    ][seed]
    hist = np.histogram(magnitudes, np.linspace(0, magnitudes.max(), 257))[0]
    assert kl_threshold_bins(hist, 32) == reference_kl_threshold_bins(hist, 32)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_mse_clip_is_near_an_exhaustive_search_and_beats_minmax(bits: int, shift: float) -> None:
    rng = np.random.default_rng(3)
    values = heavy_tailed(rng, 7000).ravel() + shift
    lo, hi = mse_clip(
        np.histogram(values, np.linspace(values.min(), values.max(), 2049))[0],
        np.linspace(values.min(), values.max(), 2049),
        bits,
    )

    grid = np.linspace(values.min(), values.max(), 97)
    exhaustive = min(
        quantization_mse(values, a, b, bits) for a in grid[grid <= 0] for b in grid[grid >= 0]
    )
    assert quantization_mse(values, lo, hi, bits) <= 1.01 * exhaustive
    assert quantization_mse(values, lo, hi, bits) < quantization_mse(
        values, values.min(), values.max(), bits
    )


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 1000), min_size=128, max_size=128).filter(any),
    low=st.floats(-100, 100),
    span=st.floats(1e-3, 100),
    bits=st.sampled_from([2, 4, 8]),
)
def test_every_method_clips_inside_the_observed_range(
    counts: list[int], low: float, span: float, bits: int
) -> None:
    hist = np.array(counts, dtype=np.int64)
    edges = np.linspace(low, low + span, hist.size + 1)
    magnitude = np.linspace(0.0, max(abs(low), abs(low + span)), hist.size + 1)
    for lo, hi in (
        percentile_clip(hist, edges, 99.0),
        mse_clip(hist, edges, bits),
        entropy_clip(hist, magnitude, low, low + span, 32),
    ):
        assert edges[0] <= lo <= hi <= edges[-1]


# --- the model, the data and the pipeline -----------------------------------------------------


def test_caller_model_changes_only_by_annotations() -> None:
    rng = np.random.default_rng(4)
    model = chain_model()
    before = ir.to_proto(model).SerializeToString()
    run(model, samples(rng.normal(size=(1, 3, 6))), method="percentile")
    assert annotations.present_keys(model) == {"mpqc.calib.range", "mpqc.report"}
    annotations.drop(model, {"mpqc.calib.range", "mpqc.report"})
    assert ir.to_proto(model).SerializeToString() == before


def test_ranges_survive_save_and_reload(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(5)
    model = chain_model()
    run(model, samples(rng.normal(size=(1, 3, 6)), rng.normal(size=(1, 3, 3))), method="mse")
    reloaded = mpqc.ir.load(mpqc.ir.save(model, tmp_path / "calibrated.onnx"))
    assert ranges(reloaded) == ranges(model)
    assert len(ranges(reloaded)) == 5


def test_weights_in_external_data_are_found(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        shifted (float[1,4] x) => (float[1,4] y) { y = Add(x, w) }
    """)
    proto.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array([[1, 2, 3, 4]], np.float32), "w")
    )
    ir.save(
        ir.from_proto(proto),
        tmp_path / "shifted.onnx",
        external_data="shifted.data",
        size_threshold_bytes=0,
    )
    model = ir.load(
        tmp_path / "shifted.onnx"
    )  # onnx_ir's own loader keeps the weight lazy, on disk
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)
    monkeypatch.chdir(tmp_path.parent)  # onnxruntime must not rely on the working directory

    run(model, CalibrationData(({"x": np.zeros((1, 4), np.float32)},)))
    assert (ranges(model)["y"]["min"], ranges(model)["y"]["max"]) == (1.0, 4.0)
    assert "w" not in ranges(model)


def test_without_calibration_data_notes_and_leaves_the_model_alone() -> None:
    model = chain_model()
    before = ir.to_proto(model).SerializeToString()
    result, context = run(model, None)
    assert not result.modified
    assert NO_DATA_NOTE in context.notes
    assert ir.to_proto(model).SerializeToString() == before


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ({"image": np.zeros((1, 3, 4), np.float32)}, "do not match"),
        ({"x": np.zeros((1, 3, 4), np.float64)}, "float64"),
        ({"x": np.zeros((1, 4, 4), np.float32)}, "shape"),
    ],
)
def test_mismatched_data_raises_data_error(sample: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DataError, match=message):
        run(chain_model(), CalibrationData((sample,), source="bad data"))


def test_empty_data_raises_data_error() -> None:
    with pytest.raises(DataError, match="no calibration samples"):
        run(chain_model(), CalibrationData(()))


def test_same_data_gives_identical_annotations() -> None:
    rng = np.random.default_rng(6)
    data = samples(heavy_tailed(rng, 1700), heavy_tailed(rng, 2300))
    outputs = []
    for _ in range(2):
        model = chain_model()
        run(model, data, method="entropy")
        outputs.append(mpqc.ir.dump(model))
    assert outputs[0] == outputs[1]


def test_non_finite_activations_are_noted_and_ranges_stay_finite() -> None:
    model = ir.from_proto(onnx.parser.parse_model(LOG_OF_RELU))
    data = CalibrationData(({"x": np.array([[-1.0, 0.5, 2.0, 4.0]], np.float32)},))
    _, context = run(model, data, method="percentile")
    y = ranges(model)["y"]
    assert relative_close(y["min"], math.log(0.5)) and relative_close(y["max"], math.log(4.0))
    assert any("'y'" in note and "NaN or Inf" in note for note in context.notes)


def test_pipeline_string_parses_and_round_trips() -> None:
    text = "calibrate{method=percentile,percentile=99.9}"
    [(cls, options)] = resolve_pipeline(text)
    assert cls is CalibratePass and options.method == "percentile" and options.percentile == 99.9
    assert format_pipeline([(cls, options)]) == text
    with pytest.raises(PassInputError, match="method"):
        resolve_pipeline("calibrate{method=kl}")
    with pytest.raises(PassInputError, match="percentile"):
        resolve_pipeline("calibrate{percentile=101}")


# --- the embedded model ----------------------------------------------------------------------

DIGITS_MODEL = pathlib.Path(mpqc.__file__).parent / "models" / "digits_cnn.onnx"
DIGITS_DATA = DIGITS_MODEL.with_name("digits.npz")


@pytest.mark.slow
@pytest.mark.skipif(
    not DIGITS_MODEL.exists() or not DIGITS_DATA.exists(),
    reason="embedded digits model not built yet",
)
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_embedded_digits_model(method: str) -> None:
    model = mpqc.ir.load(DIGITS_MODEL)
    [image] = [v for v in model.graph.inputs if not v.is_initializer()]
    with np.load(DIGITS_DATA) as archive:
        images = archive["calib_image"]
    data = CalibrationData(tuple({image.name: images[i : i + 1]} for i in range(200)))
    start = time.perf_counter()
    run(model, data, method=method)
    print(f"calibrate {method}: 200 samples in {time.perf_counter() - start:.2f} s")
    found = ranges(model)
    assert image.name in found and len(found) > 3
    assert all(
        e["samples"] == 200 and e["min"] <= e["lo"] <= e["hi"] <= e["max"] for e in found.values()
    )


def test_a_model_without_float_activations_has_nothing_to_calibrate() -> None:
    # With contract checks on, a run that wrote no range used to fail its postcondition.
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[3] x) => (int64[3] y) { y = Neg(x) }
    """
    model = ir.from_proto(onnx.parser.parse_model(text))
    data = CalibrationData(({"x": np.arange(3, dtype=np.int64)},), source="test data")
    result, context = run(model, data)
    assert not result.modified and ranges(model) == {}
    assert any("no float activation" in note for note in context.notes)
