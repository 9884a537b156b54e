"""The evaluator's big tensors stay on disk: every session it opens refers to them, none copies
them, and the numbers are those of tensors held in memory."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import random_inputs, small_cnn

from mpqc.core.bits import FLOAT_BITS
from mpqc.passes import CalibrationData, CompileContext
from mpqc.passes.analysis.calibrate import CalibratePass
from mpqc.passes.lib.evaluator import Evaluator, store

#: Small enough that every weight of the test model is stored (its biases are not: a control).
THRESHOLD = 256


def _tensors_inside(proto: onnx.ModelProto) -> list[tuple[str, int]]:
    """(name, bytes) of each tensor whose numbers travel inside ``proto``."""
    return [
        (tensor.name, len(tensor.raw_data) or 4 * len(tensor.float_data))
        for tensor in proto.graph.initializer
        if tensor.data_location != onnx.TensorProto.EXTERNAL
    ]


@pytest.fixture(scope="module")
def setup() -> tuple[ir.Model, list]:
    samples = random_inputs(small_cnn(), 4, batch=2)
    model = ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(small_cnn())))
    CalibratePass(context=CompileContext(calibration=CalibrationData(tuple(samples))))(model)
    return model, samples


def _configs(layers: list[str]) -> list[dict[str, tuple[int, int]]]:
    one_layer = [{name: bits} for name in layers for bits in ((2, FLOAT_BITS), (4, 8))]
    return [*one_layer, {name: (4, 8) for name in layers}]


def test_sessions_refer_to_stored_tensors_and_compute_the_same(setup, monkeypatch) -> None:
    model, samples = setup
    in_memory = Evaluator(model, samples)
    configs = _configs(in_memory.layers)
    want = in_memory.errors(configs, "mse")

    monkeypatch.setattr(store, "STREAMED_BYTES", THRESHOLD)
    opened: list[onnx.ModelProto] = []
    open_session = store.WeightStore.session

    def recording(self: store.WeightStore, proto: onnx.ModelProto, **options):
        opened.append(proto)
        return open_session(self, proto, **options)

    monkeypatch.setattr(store.WeightStore, "session", recording)
    stored = Evaluator(model, samples)
    assert stored.errors(configs, "mse") == want
    assert [o.tolist() for o in stored.run(configs[-1])[0]] == [
        o.tolist() for o in in_memory.run(configs[-1])[0]
    ]
    # the whole graph, the float prefix and one suffix per layer, none carrying a big tensor
    assert len(opened) >= 2 + len(stored.layers)
    for proto in opened:
        assert all(size < THRESHOLD for _, size in _tensors_inside(proto)), _tensors_inside(proto)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_stored_tensors_travel_to_worker_processes(setup, monkeypatch) -> None:
    from mpqc.passes.lib.evaluator import workers

    model, samples = setup
    configs = _configs(Evaluator(model, samples).layers)
    want = Evaluator(model, samples).errors(configs, "mse")
    monkeypatch.setattr(store, "STREAMED_BYTES", THRESHOLD)
    monkeypatch.setattr(workers, "LOCAL_WORKERS_PAY_AFTER_S", 0.0)
    monkeypatch.setattr(workers, "_idle_cores", lambda: 2)
    spread = Evaluator(model, samples)
    assert spread.errors(configs, "mse") == want
    written = onnx.load(spread._path("model.onnx"), load_external_data=False)
    assert all(size < THRESHOLD for _, size in _tensors_inside(written))


def test_stacks_are_page_aligned_in_one_file(setup, monkeypatch) -> None:
    model, samples = setup
    monkeypatch.setattr(store, "STREAMED_BYTES", THRESHOLD)
    proto = Evaluator(model, samples)._proto()
    stored = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    places = [{e.key: e.value for e in t.external_data} for t in stored]
    assert {p["location"] for p in places} == {store.DATA_FILE}
    assert all(int(p["offset"]) % 4096 == 0 for p in places)
    entry = store.entry(stored[0], 1, "second")
    assert list(entry.dims) == list(stored[0].dims[1:])
    assert np.prod(entry.dims) * 4 == int({e.key: e.value for e in entry.external_data}["length"])


def test_stored_tensors_travel_by_value_to_workers_without_this_disk(setup, monkeypatch) -> None:
    import pickle

    from mpqc.passes.lib.evaluator import workers

    model, samples = setup
    monkeypatch.setattr(store, "STREAMED_BYTES", THRESHOLD)
    sender = Evaluator(model, samples)
    configs = _configs(sender.layers)
    with workers.by_value():
        payload = pickle.dumps(sender)
    received = pickle.loads(payload)
    assert received._store._folder not in (None, sender._store._folder)
    assert received.errors(configs, "mse") == sender.errors(configs, "mse")
