"""Layers inside If/Loop/Scan bodies through the whole chain: calibration reaches body tensors, the
evaluator simulates body layers as lowered, the cost pass prices them per trip, the search moves
them under a budget, lower-qdq quantizes inside the bodies, and the plan file names them.

The model (``models.control_flow``): a Conv in each branch of an If (the else branch's reads a
tensor of its own), a MatMul in a Loop body (3 trips, a constant) and one in a Scan body (5 steps).
"""

from __future__ import annotations

import pathlib
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import build, control_flow, random_inputs, run_ort

import mpqc
from mpqc import hwspecs
from mpqc.core import Bits
from mpqc.ir import annotations as A
from mpqc.ir.layers import quantizable_layers
from mpqc.passes import CalibrationData, CompileContext, PassManager, build_pipeline
from mpqc.passes.lib.bodies import expose
from mpqc.passes.lib.evaluator import Evaluator
from mpqc.passes.lib.plan import layer_plan, stored_bytes

LAYERS = ["c/then/ct0", "c/else/ce", "h/body/m", "last/body/y"]


def _samples(count: int, seed: int = 1, go: bool | None = None) -> list[dict[str, np.ndarray]]:
    """Inputs that run the If's then branch on even samples, its else branch on odd ones (or
    always ``go``)."""
    samples = random_inputs(ir.to_proto(control_flow()), count, seed)
    for i, sample in enumerate(samples):
        sample["go"] = np.array(i % 2 == 0 if go is None else go)
    return samples


def _calibrated(
    samples: list[dict[str, np.ndarray]], model: ir.Model | None = None
) -> tuple[ir.Model, CompileContext]:
    """``model`` (default: ``control_flow()``) canonicalized and calibrated on ``samples``."""
    model = model or control_flow()
    context = CompileContext(calibration=CalibrationData(tuple(samples)))
    PassManager(build_pipeline("canonicalize,calibrate", context))(model)
    return model, context


def _ops_by_body(proto: onnx.ModelProto) -> dict[str, Counter[str]]:
    """Op counts per graph: "main", then "<host op>.<attribute>" for each body."""
    found: dict[str, Counter[str]] = {"main": Counter(n.op_type for n in proto.graph.node)}
    for node in proto.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                found[f"{node.op_type}.{attribute.name}"] = Counter(
                    n.op_type for n in attribute.g.node
                )
    return found


def _sqnr(reference: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - got) ** 2)))


def test_the_layers_inside_bodies_have_scoped_names_where_their_host_stands() -> None:
    assert [layer.name for layer in quantizable_layers(control_flow().graph)] == LAYERS


def test_exposed_body_values_are_what_the_body_computes() -> None:
    """A Loop's value gathers its trips; an If branch that did not run gives an empty tensor."""
    model = control_flow()
    proto = ir.to_proto(model)
    exposed = expose(proto, {"m": onnx.TensorProto.FLOAT, "flipped": onnx.TensorProto.FLOAT})
    assert exposed.outputs["flipped.out"] == ("flipped", 0)
    assert exposed.outputs["m.out"] == ("m", None)  # a Loop's trips, flattened
    names = list(exposed.outputs)
    (sample,) = _samples(1, go=True)
    got = dict(zip(names, run_ort(exposed.proto, sample, "basic")[-2:], strict=True))
    by_value = {exposed.outputs[name][0]: array for name, array in got.items()}
    wl = next(t for t in proto.graph.initializer if t.name == "wl")
    h, steps = sample["h0"], []
    for _ in range(3):
        steps.append(h @ onnx.numpy_helper.to_array(wl))
        h = np.tanh(steps[-1])
    np.testing.assert_allclose(by_value["m"], np.concatenate(steps, None), rtol=1e-5, atol=1e-6)
    assert by_value["flipped"].size == 0  # the else branch did not run


def test_calibration_ranges_cover_every_iteration_and_the_branch_that_ran() -> None:
    samples = _samples(4, go=True)
    model, _ = _calibrated(samples)
    values = {v.name: v for g in model.graph.subgraphs() for n in g for v in n.outputs}
    inputs = {v.name: v for g in model.graph.subgraphs() for v in g.inputs}
    wl = model.graph.initializers["wl"].const_value.numpy()
    steps = []
    for sample in samples:
        h = sample["h0"]
        for _ in range(3):
            steps.append(h @ wl)
            h = np.tanh(steps[-1])
    observed = A.CALIB_RANGE.get(values["m"])
    assert (observed["min"], observed["max"]) == pytest.approx(
        (min(s.min() for s in steps), max(s.max() for s in steps)), rel=1e-5
    )
    assert A.CALIB_RANGE.has(inputs["hi"])  # a Loop's per-iteration input
    assert A.CALIB_RANGE.has(values["ct0"]) and A.CALIB_RANGE.has(values["y"])
    assert not A.CALIB_RANGE.has(values["flipped"])  # the else branch never ran


def test_the_evaluator_computes_what_the_lowered_bodies_compute() -> None:
    samples = _samples(4)
    model, context = _calibrated(samples)
    evaluator = Evaluator(model, samples, wbits=(4, 8))
    assert evaluator.layers == LAYERS
    config = {"c/then/ct0": (8, 8), "c/else/ce": (4, 8), "h/body/m": (8, 8), "last/body/y": (4, 8)}
    expected = evaluator.run(config)
    for layer in quantizable_layers(model.graph):
        A.BITS.set(layer.node, {"w": config[layer.name][0], "a": config[layer.name][1]})
    PassManager(build_pipeline("lower-qdq", context))(model)
    lowered = ir.to_proto(model)
    onnx.checker.check_model(lowered, full_check=True)
    for sample, want in zip(samples, expected, strict=True):
        for got, w in zip(run_ort(lowered, sample, "basic"), want, strict=True):
            assert np.abs(got - w).max() <= 1e-5 * np.abs(w).max()
    # One layer at a time (the suffix sessions sensitivity analysis uses) agrees with whole runs.
    one = [{name: (4, 8)} for name in LAYERS] + [{name: (8, 32)} for name in LAYERS]
    assert evaluator.errors(one) == pytest.approx([evaluator.error(c) for c in one], rel=1e-6)


@pytest.mark.parametrize("bits", [(8, 8), (4, 8), (2, 8)])
def test_the_plan_counts_the_bytes_written_inside_bodies(bits: tuple[int, int]) -> None:
    model, context = _calibrated(_samples(6))
    layers = quantizable_layers(model.graph)
    weights = {v.name for layer in layers for v in layer.node.inputs if v and v.const_value}

    def tensors(exclude: set[str]) -> int:
        graphs = (model.graph, *model.graph.subgraphs())
        return sum(
            value.const_value.nbytes
            for graph in graphs
            for name, value in graph.initializers.items()
            if name not in exclude and value.const_value is not None
        )

    predicted = tensors(weights) + sum(
        stored_bytes(layer, layer_plan(layer, *bits)) for layer in layers
    )
    PassManager(build_pipeline(f"lower-qdq{{uniform={Bits(*bits)}}}", context))(model)
    assert tensors(set()) == predicted


def test_w8a8_quantizes_inside_every_body_and_stays_close_to_float() -> None:
    proto = ir.to_proto(control_flow())
    result = mpqc.compile(
        proto, mpqc.CompileOptions(hw="x86_avx512_vnni", calibration=_samples(8), uniform="w8a8")
    )
    onnx.checker.check_model(result.model, full_check=True)
    ops = _ops_by_body(result.model)
    for body in ("If.then_branch", "If.else_branch", "Loop.body", "Scan.body"):
        assert ops[body]["DequantizeLinear"] >= 2, body  # the weight, and the input or the bias
    for body in ("If.then_branch", "If.else_branch", "Loop.body", "Scan.body"):
        assert ops[body]["QuantizeLinear"] >= 2, body  # the layer's input and output
    assert "weights_only" not in result.report["lower-qdq"]
    bits = {row.layer: row.chosen for row in result.explanation.rows}
    assert bits == dict.fromkeys(LAYERS, "w8a8")
    # onnxruntime runs every body layer as an integer kernel: each body quantizes what it reads
    # from outside and returns its layer's quantized output.
    kernels = result.report["verify"]["kernels"]
    assert {row["layer"]: row["runs"] for row in kernels["layers"]} == {
        "c/then/ct0": "QLinearConv",
        "c/else/ce": "QLinearConv",
        "h/body/m": "QLinearMatMul",
        "last/body/y": "QLinearMatMul",
    }
    assert kernels["warnings"] == []
    for sample in _samples(4, seed=7):
        for want, got in zip(run_ort(proto, sample), run_ort(result.model, sample), strict=True):
            assert _sqnr(want, got) > 25


def test_a_branch_the_calibration_data_never_runs_quantizes_its_weights_only() -> None:
    proto = ir.to_proto(control_flow())
    result = mpqc.compile(
        proto,
        mpqc.CompileOptions(hw="x86_avx2", calibration=_samples(6, go=True), uniform="w8a8"),
    )
    onnx.checker.check_model(result.model, full_check=True)
    (entry,) = result.report["lower-qdq"]["weights_only"]
    assert entry["layer"] == "c/else/ce"
    assert "else branch of If 'c' never ran on the calibration data" in entry["reason"]
    assert any("weights_only" in note for note in result.notes)
    rows = {row.layer: row for row in result.explanation.rows}
    assert rows["c/else/ce"].chosen == "w8a32" and rows["c/else/ce"].kind == "weights only"
    assert _ops_by_body(result.model)["If.else_branch"]["QuantizeLinear"] == 0
    (sample,) = _samples(1, seed=5, go=False)  # the else branch still runs, on float inputs
    want, got = run_ort(proto, sample)[0], run_ort(result.model, sample)[0]
    assert _sqnr(want, got) > 25


def _cost(trips_known: bool) -> tuple[ir.Model, CompileContext]:
    proto = ir.to_proto(control_flow())
    samples = _samples(2)
    if not trips_known:  # the trip count becomes an input
        (trips,) = [t for t in proto.graph.initializer if t.name == "trips"]
        proto.graph.initializer.remove(trips)
        proto.graph.input.append(onnx.helper.make_tensor_value_info("trips", trips.data_type, []))
        samples = [{**sample, "trips": np.array(3, np.int64)} for sample in samples]
    model = ir.from_proto(proto)
    context = CompileContext(
        calibration=CalibrationData(tuple(samples)), hw=hwspecs.load("x86_avx2")
    )
    PassManager(build_pipeline("canonicalize,cost", context))(model)
    return model, context


def test_a_loop_body_layer_costs_once_per_trip_and_is_stored_once() -> None:
    known, _ = _cost(True)
    unknown, context = _cost(False)
    (loop_known,) = [layer for layer in quantizable_layers(known.graph) if layer.name == LAYERS[2]]
    (loop_once,) = [layer for layer in quantizable_layers(unknown.graph) if layer.name == LAYERS[2]]
    per_trip, once = A.COST.get(loop_known.node)["w8a8"], A.COST.get(loop_once.node)["w8a8"]
    assert per_trip["latency_s"] == pytest.approx(3 * once["latency_s"])
    assert per_trip["bops"] == pytest.approx(3 * once["bops"])
    assert per_trip["size"] == once["size"]
    assert any("Loop 'h' has no known trip count" in note for note in context.notes)
    scan = next(layer for layer in quantizable_layers(known.graph) if layer.name == LAYERS[3])
    assert A.COST.get(scan.node)["w8a8"]["bops"] == pytest.approx(5 * 16 * 16 * 64)


def test_a_size_budget_moves_body_layers_and_the_plan_round_trips(tmp_path: pathlib.Path) -> None:
    proto = ir.to_proto(control_flow())
    plan = tmp_path / "plan.yaml"
    options = {"hw": "x86_avx2", "calibration": _samples(8)}
    budgets = {"max_size": "0.3x", "max_latency": "1s", "wbits": (8, 4, 2)}
    result = mpqc.compile(proto, mpqc.CompileOptions(plan_out=str(plan), **budgets, **options))

    onnx.checker.check_model(result.model, full_check=True)
    chosen = result.pareto["points"][result.pareto["chosen"]]["bits"]
    assert sorted(chosen) == sorted(LAYERS)
    assert any(not bits.startswith("w8") for bits in chosen.values())
    written = plan.read_text()
    assert all(f'"{name}"' in written for name in LAYERS)
    again = mpqc.compile(proto, mpqc.CompileOptions(plan=str(plan), **options))
    for model in (result.model, again.model):
        del model.metadata_props[:]
    assert again.model.SerializeToString() == result.model.SerializeToString()


def test_orthogonality_refuses_a_layer_whose_branch_is_skipped() -> None:
    from mpqc.passes import PassInputError

    model, context = _calibrated(_samples(4, go=True))
    with pytest.raises(PassInputError, match=r"layer 'c/else/ce' does not run on every"):
        PassManager(build_pipeline("sensitivity-orthogonality", context))(model)


NESTED = """
<ir_version: 10, opset_import: ["" : 17]>
nested (float[1,8] x) => (float[1,8] y) {
  y = Loop (trips, go, x) <body = step (int64 i, bool c, float[1,8] h) => (bool c2, float[1,8] ho) {
      c2 = Identity(c)
      two = Constant <value = int64 {2}> ()
      r = Mod(i, two)
      zero = Constant <value = int64 {0}> ()
      even = Equal(r, zero)
      ho = If (even) <
        then_branch = t () => (float[1,8] a) { a = MatMul(h, wa) },
        else_branch = e () => (float[1,8] b) {
          b0 = MatMul(h, wb)
          b = Tanh(b0)
        }
      >
  }>
}
"""


def test_an_if_that_takes_turns_inside_a_loop_is_calibrated_and_quantized() -> None:
    """The branches alternate from trip to trip: each gets its range from the trips it ran."""
    proto = build(
        NESTED,
        {"wa": (8, 8), "wb": (8, 8)},
        arrays={"trips": np.array(4, np.int64), "go": np.array(True)},
    )
    samples = random_inputs(proto, 4)
    result = mpqc.compile(
        proto, mpqc.CompileOptions(hw="x86_avx2", calibration=samples, uniform="w8a8")
    )
    onnx.checker.check_model(result.model, full_check=True)
    assert "weights_only" not in result.report["lower-qdq"]
    assert {row.layer: row.chosen for row in result.explanation.rows} == {
        "y/body/ho/then/a": "w8a8",
        "y/body/ho/else/b0": "w8a8",
    }
    model, _ = _calibrated(samples, ir.from_proto(proto))
    evaluator = Evaluator(model, samples, wbits=(8,), spec=hwspecs.load("x86_avx2"))
    expected = evaluator.run(dict.fromkeys(evaluator.layers, (8, 8)))
    for sample, want in zip(samples, expected, strict=True):
        (got,) = run_ort(result.model, sample, "basic")
        assert np.abs(got - want[0]).max() <= 1e-5 * np.abs(want[0]).max()


def test_orthogonality_compares_the_features_of_layers_inside_a_loop() -> None:
    """Every trip's output, flattened: the If inside the Loop runs each branch on some trips."""
    proto = build(
        NESTED,
        {"wa": (8, 8), "wb": (8, 8)},
        arrays={"trips": np.array(4, np.int64), "go": np.array(True)},
    )
    model, context = _calibrated(random_inputs(proto, 6), ir.from_proto(proto))
    PassManager(build_pipeline("sensitivity-orthogonality", context))(model)
    scored = {
        layer.name: A.sensitivity_key("orthogonality").get(layer.node)
        for layer in quantizable_layers(model.graph)
    }
    assert sorted(scored) == ["y/body/ho/else/b0", "y/body/ho/then/a"]
    assert all(scores and all(np.isfinite(list(scores.values()))) for scores in scored.values())
