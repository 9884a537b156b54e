"""A model past the protobuf limit goes through the default pipeline with its weights left on disk:
no pass hands onnxruntime a copy of them (the limit and the evaluator's threshold are lowered so
that a small model takes the path a 2 GB one does)."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import random_inputs, small_cnn

import mpqc
from mpqc.passes.lib.evaluator import store

#: Bytes above which a float tensor inside a graph handed to onnxruntime counts as a copy.
THRESHOLD = 256


def _inline_float_tensors(model: bytes | str) -> list[str]:
    """Names of the float tensors of at least ``THRESHOLD`` bytes inside the graph ``model``."""
    proto = (
        onnx.load(model, load_external_data=False)
        if isinstance(model, str)
        else onnx.load_from_string(model)
    )
    return [
        tensor.name
        for tensor in proto.graph.initializer
        if tensor.data_location != onnx.TensorProto.EXTERNAL
        and tensor.data_type == onnx.TensorProto.FLOAT
        and len(tensor.raw_data) + 4 * len(tensor.float_data) >= THRESHOLD
    ]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Per onnxruntime session opened from here on, the big float tensors inside its graph."""
    models: list[list[str]] = []
    real = ort.InferenceSession

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, model: bytes | str, *args: object, **kwargs: object) -> None:
            models.append(_inline_float_tensors(model))
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    return models


@pytest.mark.parametrize("stored", ["external", "inline"])
def test_default_pipeline_leaves_the_weights_of_a_big_model_on_disk(
    stored: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, opened: list[list[str]]
) -> None:
    model = small_cnn()
    path = tmp_path / "model.onnx"
    external = stored == "external"
    onnx.save_model(
        ir.to_proto(model),
        path,
        save_as_external_data=external,
        location="model.data",
        size_threshold=0,
    )
    if external:  # past the protobuf limit: it must stay on disk
        monkeypatch.setattr("mpqc.ir.io._PROTOBUF_LIMIT", 1000)
    else:  # past the size from which mpqc keeps a model's tensors on disk
        monkeypatch.setattr("mpqc.ir.io._ON_DISK_ABOVE", 1000)
    monkeypatch.setattr("mpqc.ir.io._EXTERNAL_THRESHOLD", THRESHOLD)
    monkeypatch.setattr(store, "STREAMED_BYTES", THRESHOLD)
    samples = random_inputs(model, 10, batch=1)
    options = mpqc.CompileOptions(hw="x86_avx512_vnni", calibration=samples, max_size="0.5x")
    result = mpqc.compile(str(path), options)

    steps = [step.split("{")[0] for step in result.pipeline.split(",")]
    assert {"calibrate", "sensitivity-output", "search", "recover", "verify"} <= set(steps)
    assert result.report["verify"]["checker"] == "ok"
    assert "samples" in result.report["verify"]  # fidelity measured against the float reference
    assert len(opened) >= 5
    assert [name for inside in opened for name in inside] == []

    # the same compilation of the model held in memory gives the same model
    in_memory = mpqc.compile(ir.to_proto(small_cnn()), options)
    for name, value in in_memory.ir_model.graph.initializers.items():
        np.testing.assert_array_equal(
            result.ir_model.graph.initializers[name].const_value.numpy(),
            value.const_value.numpy(),
        )
