"""A big model that ``load`` made keeps its tensors on disk, read on demand (``_ON_DISK_ABOVE`` is
lowered so that a small model takes that path)."""

from __future__ import annotations

import gc
import os
import pathlib

import numpy as np
import onnx_ir as ir
import pytest
from models import small_cnn

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
