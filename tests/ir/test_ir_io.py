"""mpqc.ir.io: every model kind in and back out, atomic saves, external data."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnx_ir as ir
import pytest
from models import random_inputs, run_ort, small_cnn

from mpqc import ir as mir


def _outputs(model: object) -> np.ndarray:
    reference = small_cnn()
    feeds = random_inputs(reference, 1)[0]
    return run_ort(mir.load(model), feeds)[0]


@pytest.mark.parametrize("kind", ["path", "str", "proto", "onnx_ir", "graphsurgeon"])
def test_load_accepts_every_kind_and_as_kind_returns_it(kind: str, cnn_path: pathlib.Path) -> None:
    proto = onnx.load(cnn_path)
    given = {
        "path": cnn_path,
        "str": str(cnn_path),
        "proto": proto,
        "onnx_ir": ir.from_proto(proto),
        "graphsurgeon": gs.import_onnx(proto),
    }[kind]
    loaded = mir.load(given)
    assert isinstance(loaded, ir.Model)
    assert [n.op_type for n in loaded.graph] == [n.op_type for n in proto.graph.node]
    back = mir.as_kind(loaded, given)
    expected_type = {
        "path": ir.Model,
        "str": ir.Model,
        "proto": onnx.ModelProto,
        "onnx_ir": ir.Model,
        "graphsurgeon": gs.Graph,
    }[kind]
    assert isinstance(back, expected_type)
    np.testing.assert_array_equal(
        _outputs(back if kind != "graphsurgeon" else gs.export_onnx(back)), _outputs(proto)
    )


def test_load_returns_an_onnx_ir_model_itself(cnn: ir.Model) -> None:
    assert mir.load(cnn) is cnn


def test_load_rejects_other_objects() -> None:
    with pytest.raises(mir.ModelError, match="cannot load a list"):
        mir.load([1, 2])


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"this is not a model", "not a readable ONNX model"), (None, "does not exist")],
)
def test_load_bad_files_raise_one_line_model_errors(
    tmp_path: pathlib.Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(mir.ModelError, match=message) as info:
        mir.load(path)
    assert "\n" not in str(info.value)


def test_load_truncated_model(cnn_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    data = cnn_path.read_bytes()
    half = tmp_path / "half.onnx"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(mir.ModelError, match="not a readable ONNX model"):
        mir.load(half)


def test_save_writes_a_loadable_model(cnn: ir.Model, tmp_path: pathlib.Path) -> None:
    path = mir.save(cnn, tmp_path / "out.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_save_is_atomic(
    cnn: ir.Model, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    mir.save(cnn, path)
    before = path.read_bytes()

    def broken_save(model: ir.Model, target: os.PathLike, **kwargs: object) -> None:
        pathlib.Path(target).write_bytes(b"half a model")  # a write interrupted mid-way
        raise OSError("disk full")

    monkeypatch.setattr(ir, "save", broken_save)
    with pytest.raises(mir.OutputError, match=r"\(disk full\); nothing was written"):
        mir.save(small_cnn(seed=5), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_save_replaces_an_existing_model(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "model.onnx"
    mir.save(small_cnn(seed=1), path)
    mir.save(small_cnn(seed=2), path)
    assert path.read_bytes() == ir.to_proto(small_cnn(seed=2)).SerializeToString()


def test_big_models_go_to_external_data(
    cnn: ir.Model, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _outputs(cnn)
    monkeypatch.setattr("mpqc.ir.io._PROTOBUF_LIMIT", 1000)
    path = mir.save(cnn, tmp_path / "big.onnx")
    data = tmp_path / "big.onnx.data"
    assert data.exists() and data.stat().st_size > 1000
    assert path.stat().st_size < data.stat().st_size
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    np.testing.assert_array_equal(run_ort(str(path), random_inputs(cnn, 1)[0])[0], expected)

    lazy = mir.load(path)  # still "too big": tensors stay in the data file until read
    assert isinstance(lazy.graph.initializers["w3"].const_value, ir.ExternalTensor)
    for name, value in cnn.graph.initializers.items():
        np.testing.assert_array_equal(
            lazy.graph.initializers[name].const_value.numpy(), value.const_value.numpy()
        )


def test_external_data_of_a_model_that_fits_is_read_into_memory(
    cnn: ir.Model, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exporters write external data for small models too; passes hand models to onnxruntime as
    # bytes.
    onnx.save(
        ir.to_proto(cnn),
        tmp_path / "m.onnx",
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    monkeypatch.chdir(
        tmp_path.parent
    )  # relative references must resolve against the model's folder
    loaded = mir.load(tmp_path / "m.onnx")
    assert not any(
        isinstance(v.const_value, ir.ExternalTensor) for v in loaded.graph.initializers.values()
    )
    np.testing.assert_array_equal(_outputs(loaded), _outputs(cnn))
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(mir.ModelError, match="external data that cannot be read"):
        mir.load(tmp_path / "m.onnx")


def test_tensor_bytes_counts_initializers(cnn: ir.Model) -> None:
    expected = sum(v.const_value.nbytes for v in cnn.graph.initializers.values())
    assert (
        mir.tensor_bytes(cnn)
        == expected
        == 4 * (8 * 27 + 8 + 16 * 72 + 16 + 16 * 144 + 16 + 160 + 10)
    )


def test_load_a_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(mir.ModelError, match="is a directory, not an ONNX model file"):
        mir.load(tmp_path)


def test_load_a_proto_with_external_data_and_its_base_dir(
    cnn: ir.Model, tmp_path: pathlib.Path
) -> None:
    onnx.save(
        ir.to_proto(cnn),
        tmp_path / "m.onnx",
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    proto = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    loaded = mir.load(proto, base_dir=tmp_path)
    np.testing.assert_array_equal(_outputs(loaded), _outputs(cnn))


def _one_line_model_error(path: pathlib.Path, *fragments: str) -> str:
    with pytest.raises(mir.ModelError) as info:
        mir.load(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_load_refuses_what_is_not_a_regular_file(tmp_path: pathlib.Path, kind: str) -> None:
    # /dev/zero used to be read until memory ran out; a FIFO blocked until something wrote to it.
    if kind == "fifo":
        path = tmp_path / "model.onnx"
        os.mkfifo(path)
    else:
        path = pathlib.Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero here")
    _one_line_model_error(path, "not a regular file")


def test_load_refuses_a_file_larger_than_any_onnx_protobuf(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "huge.onnx"
    with path.open("wb") as file:  # sparse: nothing is written, and nothing must be read
        file.truncate(3 * 2**30)
    _one_line_model_error(path, "larger than an ONNX protobuf can be", "external data")


def test_load_refuses_an_empty_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _one_line_model_error(path, "is empty")


def test_load_refuses_a_model_without_a_graph(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "no_graph.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    _one_line_model_error(path, "no graph outputs")


def test_load_refuses_an_initializer_whose_dims_disagree_with_its_data(
    cnn_path: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    proto = onnx.load(cnn_path)
    proto.graph.initializer[0].dims[0] += 3
    path = tmp_path / "bad_dims.onnx"
    onnx.save(proto, path)
    name = proto.graph.initializer[0].name
    _one_line_model_error(path, f"tensor {name!r}", "does not match its shape")


def test_load_refuses_a_constant_whose_dims_disagree_with_its_data(tmp_path: pathlib.Path) -> None:
    value = onnx.numpy_helper.from_array(np.ones((2, 3), np.float32), "c")
    value.dims[1] = 4
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["y"], value=value)],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    path = tmp_path / "bad_constant.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    _one_line_model_error(path, "does not match its shape")


def test_load_refuses_short_external_data(cnn: ir.Model, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(
        ir.to_proto(cnn), path, save_as_external_data=True, location="m.data", size_threshold=0
    )
    data = tmp_path / "m.data"
    data.write_bytes(data.read_bytes()[:100])
    _one_line_model_error(path, "external data that cannot be read")


def test_load_refuses_a_graph_cycle(tmp_path: pathlib.Path) -> None:
    helper = onnx.helper
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "b"], ["a"], name="add"),
            helper.make_node("Relu", ["a"], ["b"], name="loop_back"),
            helper.make_node("Relu", ["a"], ["y"], name="out"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "cycle.onnx"
    onnx.save(helper.make_model(graph), path)
    _one_line_model_error(path, "cycle", "'add'")


def test_load_refuses_an_opset_newer_than_onnx_knows(tmp_path: pathlib.Path) -> None:
    # Found only by verify before, after all the work.
    newest = onnx.defs.onnx_opset_version()
    text = f"""
    <ir_version: 10, opset_import: ["" : {newest + 2}]>
    g (float[1,4] x) => (float[1,4] y) {{ y = Relu(x) }}
    """
    path = tmp_path / "future.onnx"
    onnx.save(onnx.parser.parse_model(text), path)
    _one_line_model_error(path, f"opset {newest + 2}", f"re-export the model at opset {newest}")


def test_checking_a_lazy_model_leaves_no_tensor_mapped(
    cnn: ir.Model, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each mapped external tensor holds a file descriptor; a model has thousands of tensors.
    monkeypatch.setattr("mpqc.ir.io._PROTOBUF_LIMIT", 1000)
    path = mir.save(cnn, tmp_path / "big.onnx")
    descriptors = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    if descriptors is None:
        pytest.skip("no /proc/self/fd here")
    lazy = mir.load(path)
    assert isinstance(lazy.graph.initializers["w3"].const_value, ir.ExternalTensor)
    assert len(os.listdir("/proc/self/fd")) == descriptors
