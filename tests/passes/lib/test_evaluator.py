"""The configurable evaluator: one session, any configuration, exactly the numbers lower-qdq ships.

The reference is the lowered model run by onnxruntime with graph optimizations off, i.e. the QDQ
graph executed as written. (With optimizations on, onnxruntime replaces 8-bit Q/DQ around a Conv by
its integer QLinearConv kernel, whose requantization rounds differently by up to an LSB of the
output quantizer; layers that do not fuse give identical numbers either way, which is checked too.)
"""

from __future__ import annotations

import concurrent.futures
import pickle

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import build, random_inputs, small_cnn

from mpqc.core.bits import FLOAT_BITS
from mpqc.ir import annotations
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext
from mpqc.passes.analysis.calibrate import CalibratePass
from mpqc.passes.lib.evaluator import Evaluator, output_error
from mpqc.passes.lower.lower_qdq import LowerQDQPass

# r1 is both a graph output and read by two layers (a shared input quantizer when their bits agree);
# r1 is also c1's output-quantizer target; the Add reads the two branch outputs.
BRANCHY = """
<ir_version: 10, opset_import: ["" : 17]>
branchy (float[N,4,6,6] x) => (float[N,6,6,6] y, float[N,8,6,6] r1) {
  c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)
  r1 = Relu(c1)
  ca = Conv <pads=[1,1,1,1]> (r1, wa, ba)
  cb = Conv (r1, wb, bb)
  s = Add(ca, cb)
  y = Relu(s)
}
"""
BRANCHY_WEIGHTS = {
    "w1": (8, 4, 3, 3),
    "b1": (8,),
    "wa": (6, 8, 3, 3),
    "ba": (6,),
    "wb": (6, 8, 1, 1),
    "bb": (6,),
}


def _prepared(model: ir.Model, samples: list[dict[str, np.ndarray]]) -> ir.Model:
    """Shape-inferred (lower-qdq types its new values from the originals) and calibrated."""
    model = ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model)))
    CalibratePass(context=CompileContext(calibration=CalibrationData(tuple(samples))))(model)
    return model


def _lowered_outputs(
    model: ir.Model, config: dict[str, tuple[int, int]], samples: list, optimize: bool = False
) -> list[list[np.ndarray]]:
    copy = ir.from_proto(ir.to_proto(model))
    for layer in quantizable_layers(copy.graph):
        if layer.name in config:
            annotations.BITS.set(
                layer.node, {"w": config[layer.name][0], "a": config[layer.name][1]}
            )
    LowerQDQPass(context=CompileContext())(copy)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        ir.to_proto(copy).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return [session.run(None, s) for s in samples]


def _assert_equal(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> None:
    for g_sample, w_sample in zip(got, want, strict=True):
        for g, w in zip(g_sample, w_sample, strict=True):
            scale = max(float(np.max(np.abs(w))), 1e-12)
            assert float(np.max(np.abs(g - w))) <= 1e-5 * scale


@pytest.fixture(scope="module")
def cnn_setup() -> tuple[ir.Model, list, Evaluator]:
    samples = random_inputs(small_cnn(), 6, batch=2)
    model = _prepared(small_cnn(), samples)
    return model, samples, Evaluator(model, samples)


@pytest.fixture(scope="module")
def branchy_setup() -> tuple[ir.Model, list, Evaluator]:
    proto = build(BRANCHY, BRANCHY_WEIGHTS, seed=3)
    samples = random_inputs(proto, 5, batch=2)
    model = _prepared(ir.from_proto(proto), samples)
    return model, samples, Evaluator(model, samples)


def _random_mix(layers: list[str], seed: int) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return {
        name: (int(rng.choice([2, 3, 4, 8, 32])), int(rng.choice([2, 3, 4, 5, 6, 8, 32])))
        for name in layers
    }


@pytest.mark.parametrize(
    "choice", ["w8a8", "w4a8", "w2a4", "w3a6", "mix0", "mix1", "mix2", "upstream"]
)
def test_small_cnn_equals_lowered_model(cnn_setup, choice: str) -> None:
    model, samples, evaluator = cnn_setup
    if choice == "upstream":  # c2 reads c1's output quantizer, so its bias goes int32 at that scale
        config = {"c1": (8, 8), "c2": (4, FLOAT_BITS)}
    elif choice.startswith("mix"):
        config = _random_mix(evaluator.layers, int(choice[3:]))
    else:
        w, a = (int(x) for x in choice[1:].split("a"))
        config = {name: (w, a) for name in evaluator.layers}
    _assert_equal(evaluator.run(config), _lowered_outputs(model, config, samples))


@pytest.mark.parametrize("seed", range(4))
def test_shared_and_separate_quantizers_equal_lowered_model(branchy_setup, seed: int) -> None:
    model, samples, evaluator = branchy_setup
    config = _random_mix(evaluator.layers, seed)
    _assert_equal(evaluator.run(config), _lowered_outputs(model, config, samples))
    shared = {
        "c1": (8, 8),
        "ca": (8, 8),
        "cb": (8, 8),
    }  # r1's output quantizer is ca's and cb's input quantizer
    _assert_equal(evaluator.run(shared), _lowered_outputs(model, shared, samples))
    split = {"c1": (8, 8), "ca": (8, 6), "cb": (4, 8)}
    _assert_equal(evaluator.run(split), _lowered_outputs(model, split, samples))


def test_unfused_layers_equal_optimized_runtime_too(cnn_setup) -> None:
    model, samples, evaluator = cnn_setup
    config = {name: (4, 8) for name in evaluator.layers}
    _assert_equal(evaluator.run(config), _lowered_outputs(model, config, samples, optimize=True))


def test_float_config_is_the_float_model(cnn_setup) -> None:
    model, samples, evaluator = cnn_setup
    session = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for got, sample in zip(evaluator.reference, samples, strict=True):
        np.testing.assert_allclose(got[0], session.run(None, sample)[0], rtol=1e-6, atol=1e-6)
    # the reference runs the float graph optimized, the configurable graph as written
    assert evaluator.error({}, "mse") == pytest.approx(0.0, abs=1e-12)


def test_error_grows_as_bits_shrink(cnn_setup) -> None:
    _, _, evaluator = cnn_setup
    errors = [
        evaluator.error({name: (b, b) for name in evaluator.layers}, "mse") for b in (8, 4, 3, 2)
    ]
    assert errors == sorted(errors) and errors[0] > 0


def test_measures() -> None:
    reference = [[np.array([[3.0, 1.0, 0.0]])], [np.array([[0.0, 2.0, 1.0]])]]
    flipped = [[np.array([[3.0, 1.0, 0.0]])], [np.array([[0.0, 1.0, 2.0]])]]
    assert output_error(reference, flipped, "flips") == 0.5
    assert output_error(reference, reference, "kl") == pytest.approx(0.0, abs=1e-12)
    assert output_error(reference, flipped, "kl") > 0
    assert output_error(reference, flipped, "mse") == pytest.approx(2.0 / 15.0)
    with pytest.raises(ValueError, match="unknown measure"):
        output_error(reference, flipped, "l1")  # type: ignore[arg-type]


def test_mse_weighs_every_float_output_alike_and_leaves_integer_ones_out() -> None:
    """A pooled output ([1, 2]) beside a token-level one ([1, 50]) counts as much as it, and token
    ids passed through (int64, far bigger) neither dilute nor add to the error."""
    tokens, pooled = np.ones((1, 50)), np.ones((1, 2))
    ids = np.arange(50, dtype=np.int64).reshape(1, 50) * 1000
    reference = [[tokens, pooled, ids]]
    moved_pooled = [[tokens, pooled * 1.1, ids]]
    moved_tokens = [[tokens * 1.1, pooled, ids]]
    assert output_error(reference, moved_pooled, "mse") == pytest.approx(0.01 / 2)
    assert output_error(reference, moved_tokens, "mse") == pytest.approx(0.01 / 2)
    assert output_error(reference, [[tokens, pooled, ids + 7]], "mse") == 0.0


def test_unknown_layer_and_unprepared_bits_are_clear_errors(cnn_setup) -> None:
    _, _, evaluator = cnn_setup
    with pytest.raises(KeyError, match="no quantizable layer named 'nope'"):
        evaluator.run({"nope": (8, 8)})
    with pytest.raises(ValueError, match="weight bits 6 not prepared"):
        evaluator.run({evaluator.layers[0]: (6, 8)})


def test_executor_gives_the_same_errors(cnn_setup) -> None:
    model, samples, _ = cnn_setup
    configs = [{name: (b, 8)} for name in ("c1", "c2", "logits") for b in (2, 4)]
    inline = Evaluator(model, samples).errors(configs, "kl")
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        parallel = Evaluator(model, samples, executor=pool).errors(configs, "kl")
    assert parallel == inline
    original = Evaluator(model, samples)
    revived = pickle.loads(pickle.dumps(original))  # what a worker process receives
    # the whole graph against the suffixes' optimized sessions: equal to float rounding
    assert [revived.error(c, "kl") for c in configs] == pytest.approx(inline, rel=1e-5)


def test_batched_samples_give_the_same_errors(cnn_setup) -> None:
    model, samples, evaluator = cnn_setup
    batched = Evaluator(model, samples, batch=4)
    assert len(batched.samples) == 2 and batched.samples[0]["image"].shape[0] == 8
    for config in (
        {"c2": (2, 32)},
        {"logits": (32, 4)},
        {name: (4, 8) for name in evaluator.layers},
    ):
        for measure in ("kl", "mse", "flips"):
            assert batched.error(config, measure) == pytest.approx(
                evaluator.error(config, measure), rel=1e-4, abs=1e-9
            )


# --- One layer at a time: the prefix runs once, each layer's suffix per configuration
# ----------------

# Two outputs, one of which ('side') no layer after c2 touches; 'b' reads c1's output and 'c2' reads
# b.
TWO_HEADS = """
<ir_version: 10, opset_import: ["" : 17]>
two_heads (float[N,4,6,6] x) => (float[N,6,6,6] y, float[N,8,6,6] side) {
  c1 = Conv <pads=[1,1,1,1]> (x, w1, b1)
  side = Relu(c1)
  c2 = Conv <pads=[1,1,1,1]> (side, w2, b2)
  y = Relu(c2)
}
"""


@pytest.fixture(scope="module")
def two_heads_setup() -> tuple[ir.Model, list, Evaluator]:
    proto = build(
        TWO_HEADS, {"w1": (8, 4, 3, 3), "b1": (8,), "w2": (6, 8, 3, 3), "b2": (6,)}, seed=4
    )
    samples = random_inputs(proto, 4, batch=2)
    model = _prepared(ir.from_proto(proto), samples)
    return model, samples, Evaluator(model, samples)


@pytest.mark.parametrize("setup", ["cnn_setup", "branchy_setup", "two_heads_setup"])
def test_one_layer_configurations_run_on_suffixes_with_the_whole_graph_numbers(
    setup: str, request
) -> None:
    model, samples, evaluator = request.getfixturevalue(setup)
    configs = [
        {name: bits}
        for name in evaluator.layers
        for bits in ((2, FLOAT_BITS), (8, FLOAT_BITS), (FLOAT_BITS, 4), (8, 8), (4, 8))
    ]
    configs.append(
        {name: (4, 8) for name in evaluator.layers}
    )  # not one layer: the whole graph runs
    # Suffixes and the reference run in optimized sessions (blocked-layout convolutions), the
    # whole graph as written: float rounding (1e-7 of the outputs) apart, which moves the smallest
    # errors (1e-6) by a few 1e-4 of themselves.
    for measure in ("mse", "kl"):
        assert evaluator.errors(configs, measure) == pytest.approx(
            [evaluator.error(c, measure) for c in configs], rel=1e-3, abs=1e-10
        )
    last = evaluator.layers[-1]
    float_error, quantized = evaluator.layer_errors([(last, [{}, {last: (2, FLOAT_BITS)}])])[0]
    assert float_error == pytest.approx(0.0, abs=1e-10) and quantized > 1e-6


def test_suffix_outputs_equal_lowered_model(two_heads_setup) -> None:
    model, samples, evaluator = two_heads_setup
    for config in ({"c2": (4, 8)}, {"c1": (8, 8)}, {"c1": (FLOAT_BITS, 3)}):
        want = output_error(evaluator.reference, _lowered_outputs(model, config, samples), "mse")
        assert evaluator.errors([config, config], "mse") == pytest.approx(
            [want, want], rel=1e-5, abs=1e-12
        )


def test_local_workers_give_the_same_errors(cnn_setup, monkeypatch) -> None:
    from mpqc.passes.lib.evaluator import cut, workers

    model, samples, inline = cnn_setup
    configs = [{name: (b, FLOAT_BITS)} for name in inline.layers for b in (2, 4)] + [
        {name: (4, 8) for name in inline.layers}
    ]
    monkeypatch.setattr(workers, "LOCAL_WORKERS_PAY_AFTER_S", 0.0)
    monkeypatch.setattr(workers, "_idle_cores", lambda: 2)
    monkeypatch.setattr(cut, "LAYERS_PER_PREFIX", 2)
    spread = Evaluator(model, samples)
    assert spread.errors(configs, "mse") == inline.errors(configs, "mse")
    assert spread._store._folder is not None  # the work went to worker processes


def test_samples_batch_by_shape_without_padding() -> None:
    text = (
        TWO_HEADS.replace("[N,4,6,6]", "[N,4,H,W]")
        .replace("[N,6,6,6]", "[N,6,H,W]")
        .replace("[N,8,6,6]", "[N,8,H,W]")
    )
    proto = build(text, {"w1": (8, 4, 3, 3), "b1": (8,), "w2": (6, 8, 3, 3), "b2": (6,)}, seed=5)
    rng = np.random.default_rng(2)
    samples = [
        {"x": rng.standard_normal((1, 4, size, size)).astype(np.float32)}
        for size in (6, 5, 6, 5, 6)
    ]
    model = _prepared(ir.from_proto(proto), samples)
    single, batched = Evaluator(model, samples), Evaluator(model, samples, batch=2)
    assert [s["x"].shape for s in batched.samples] == [(2, 4, 6, 6), (1, 4, 6, 6), (2, 4, 5, 5)]
    configs = [{"c1": (2, FLOAT_BITS)}, {"c2": (4, 8)}]
    assert batched.errors(configs, "mse") == pytest.approx(single.errors(configs, "mse"), rel=1e-5)


# 'rate' is a graph input nothing reads (exporters leave such inputs behind): the suffix and prefix
# sessions drop it, and must not be fed it.
UNUSED_INPUT = """
<ir_version: 10, opset_import: ["" : 17]>
unused_input (float[N,3,8,8] image, float[1] rate) => (float[N,10] logits) {
  c1 = Conv <pads=[1,1,1,1]> (image, w1, b1)
  r1 = Relu(c1)
  c2 = Conv <pads=[1,1,1,1]> (r1, w2, b2)
  p = GlobalAveragePool(c2)
  f = Flatten(p)
  logits = Gemm <transB=1> (f, w3, b3)
}
"""


def test_a_graph_input_the_model_does_not_use_compiles_with_calibration_data() -> None:
    import mpqc

    proto = build(
        UNUSED_INPUT,
        {
            "w1": (8, 3, 3, 3),
            "b1": (8,),
            "w2": (8, 8, 3, 3),
            "b2": (8,),
            "w3": (10, 8),
            "b3": (10,),
        },
    )
    samples = [
        {**sample, "rate": np.ones(1, np.float32)}
        for sample in random_inputs(ir.from_proto(proto), 10)
    ]
    result = mpqc.compile(
        proto,
        mpqc.CompileOptions(hw="x86_avx512_vnni", calibration=samples, max_size="0.5x"),
    )
    assert result.report["verify"]["checker"] == "ok"
    assert [value.name for value in result.ir_model.graph.inputs] == ["image", "rate"]


# A bidirectional LSTM feeding a Gemm: its dynamic form (DynamicQuantizeLSTM) runs in the
# evaluator itself, beside the float LSTM.
RECURRENT = """
<ir_version: 10, opset_import: ["" : 17]>
recurrent (float[6,1,8] x) => (float[6,2,1,5] y) {
  h = LSTM <hidden_size=12, direction="bidirectional"> (x, w, r, b)
  y = MatMul(h, head)
}
"""


def test_the_dynamic_lstm_switch_runs_on_suffixes_and_the_whole_graph_alike() -> None:
    """One-layer configurations at w8adyn (the LSTM's DynamicQuantizeLSTM, the MatMul's dynamic
    range) give the whole graph's numbers on the layer's suffix, and the kernel's numbers differ
    from the static w8a8 LSTM's and from float."""
    proto = build(RECURRENT, {"w": (2, 48, 8), "r": (2, 48, 12), "b": (2, 96), "head": (12, 5)})
    samples = random_inputs(proto, 3)
    model = _prepared(ir.from_proto(proto), samples)
    evaluator = Evaluator(model, samples, wbits=(8,))
    lstm, head = evaluator.layers
    dynamic = (8, 8, True)
    configs = [{lstm: dynamic}, {head: dynamic}, {lstm: (8, 8)}, {lstm: dynamic, head: dynamic}]
    errors = evaluator.errors(configs)
    assert errors == pytest.approx([evaluator.error(c) for c in configs], rel=1e-3, abs=1e-12)
    assert errors[0] > 0 and errors[0] != pytest.approx(errors[2])
