"""A big model that ``load`` made keeps its tensors on disk, read on demand (``_ON_DISK_ABOVE`` is
lowered so that a small model takes that path)."""

from __future__ import annotations

import gc
import os
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import control_flow, random_inputs, small_cnn

import mpqc
from mpqc import ir as mir
from mpqc.ir.io import StreamedTensor


def test_inline_tensors_of_a_big_model_move_to_a_temporary_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    ir.save(small_cnn(), path)
    monkeypatch.setattr("mpqc.ir.io._ON_DISK_ABOVE", 1000)
    model = mir.load(path)
    moved = {
        name: value.const_value
        for name, value in model.graph.initializers.items()
        if isinstance(value.const_value, StreamedTensor)
    }
    assert set(moved) == {"w2", "w3"}  # the others are under 1 kB: they stay inline
    folder = mir.io.external_folder(model)
    assert folder is not None and folder != str(tmp_path)
    for name, value in small_cnn().graph.initializers.items():
        np.testing.assert_array_equal(
            model.graph.initializers[name].const_value.numpy(), value.const_value.numpy()
        )
    assert all(int(t.offset or 0) % 4096 == 0 for t in moved.values())

    copy = tmp_path / "copy.onnx"
    mir.save(model, copy)  # fits one protobuf: written whole, as the model was
    assert copy.read_bytes() == path.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["copy.onnx", "model.onnx"]

    del model, moved
    gc.collect()
    assert not os.path.exists(folder)  # removed with the last tensor that read it


def test_small_models_and_the_callers_own_stay_in_memory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    ir.save(small_cnn(), path)
    assert mir.io.external_folder(mir.load(path)) is None
    monkeypatch.setattr("mpqc.ir.io._ON_DISK_ABOVE", 1000)
    own = small_cnn()
    assert mir.load(own) is own and mir.io.external_folder(own) is None


def _weights_in_body_constants() -> onnx.ModelProto:
    """``models.control_flow`` with each body's weight in a ``Constant`` node of that body (as
    exporters write them) instead of an initializer of the main graph."""
    proto = ir.to_proto(control_flow())
    weights = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        for attribute in node.attribute:
            if not attribute.HasField("g"):
                continue
            body = attribute.g
            read = {name for n in body.node for name in n.input} & {"wt", "we", "wl", "ws"}
            for name in sorted(read):
                body.node.insert(
                    0, onnx.helper.make_node("Constant", [], [name], value=weights[name])
                )
                proto.graph.initializer.remove(weights[name])
    onnx.checker.check_model(proto, full_check=True)
    return proto


def test_weights_in_body_constants_stay_on_disk_and_compile_alike(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_weights_in_body_constants(), path)
    samples = random_inputs(onnx.load(path), 4)
    for i, sample in enumerate(samples):
        sample["go"] = np.array(i % 2 == 0)  # both branches run
    options = mpqc.CompileOptions(hw="generic", calibration=samples, uniform="w8a8")
    in_memory = mpqc.compile(str(path), options).model

    monkeypatch.setattr("mpqc.ir.io._ON_DISK_ABOVE", 1000)
    model = mir.load(path)
    bodies = {graph.name: graph for graph in model.graph.subgraphs()}
    streamed = {
        (graph, name)
        for graph, body in bodies.items()
        for name, value in body.initializers.items()
        if isinstance(value.const_value, StreamedTensor)
    }
    # The If branches' Conv weights (864 bytes) are under 1 kB: initializers too, but inline.
    assert streamed == {("step", "wl"), ("scan_step", "ws")}
    assert not any(node.op_type == "Constant" for body in bodies.values() for node in body)

    on_disk = mpqc.compile(str(path), options).model
    assert mpqc.ir.dump(on_disk) == mpqc.ir.dump(in_memory)
