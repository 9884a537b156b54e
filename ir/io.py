"""Loading and saving models, whatever kind the caller holds.

mpqc works on ``onnx_ir.Model`` internally, but users and toolchains arrive with a path, an
``onnx.ModelProto``, an ``onnx_ir.Model`` or an ``onnx_graphsurgeon.Graph``. ``load`` turns any of them
into an ``onnx_ir.Model``; ``as_kind`` turns the result back into the caller's kind, so public entry
points hand back what they were given.

Saving is atomic (temporary files in the destination folder, then ``os.replace``) so that an
interrupted run never leaves a half-written model where a good one used to be, and models whose
tensors pass the protobuf limit (2 GB) go to external data automatically.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

import onnx
import onnx_ir as ir

from mpqc.core.errors import MpqcError

__all__ = ["ModelError", "ModelLike", "as_kind", "check_writable", "load", "save", "tensor_bytes"]

#: Anything ``load`` accepts.
ModelLike = Any  # str | os.PathLike | onnx.ModelProto | onnx_ir.Model | onnx_graphsurgeon.Graph

#: Protobuf refuses to serialize messages over 2 GiB; stay clear of it with a margin for the graph.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20
#: Tensors at least this big go to the external data file when a model is saved externally.
_EXTERNAL_THRESHOLD = 1024


class ModelError(MpqcError):
    """The input is not a usable ONNX model (missing, truncated, not ONNX, unsupported kind)."""


def load(model: ModelLike, base_dir: str | os.PathLike | None = None) -> ir.Model:
    """Return an ``onnx_ir.Model`` for a path, ``ModelProto``, ``onnx_ir.Model`` or ``gs.Graph``.

    An ``onnx_ir.Model`` is returned as is (passes edit it in place, as onnx_ir passes do); other
    kinds are converted. ``base_dir`` locates external data for a ``ModelProto`` that references it.
    """
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return _load_path(pathlib.Path(model))
    if isinstance(model, onnx.ModelProto):
        loaded = ir.from_proto(model)
        if base_dir is not None:
            ir.external_data.set_base_dir(loaded.graph, base_dir)
            _into_memory_if_it_fits(loaded)
        return loaded
    if _is_gs_graph(model):
        import onnx_graphsurgeon as gs

        return ir.from_proto(gs.export_onnx(model))
    raise ModelError(
        f"cannot load a {type(model).__name__}: pass a path, an onnx.ModelProto, an onnx_ir.Model "
        "or an onnx_graphsurgeon.Graph"
    )


def as_kind(model: ir.Model, like: ModelLike) -> ModelLike:
    """Convert ``model`` to the kind of ``like`` (a path-like gives an ``onnx_ir.Model``)."""
    if isinstance(like, onnx.ModelProto):
        return ir.to_proto(model)
    if _is_gs_graph(like):
        import onnx_graphsurgeon as gs

        return gs.import_onnx(ir.to_proto(model))
    return model


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of all constant tensors (initializers, subgraph initializers) of ``model``."""
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def save(model: ir.Model, path: str | os.PathLike) -> pathlib.Path:
    """Write ``model`` to ``path`` atomically; returns the path.

    Models whose tensors would overflow a single protobuf go to ``<name>.data`` beside the model.
    An existing file at ``path`` is replaced only once the new one is complete.
    """
    path = pathlib.Path(path)
    check_writable(path)
    parent = path.parent
    external = tensor_bytes(model) > _PROTOBUF_LIMIT
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{path.name}.") as tmp:
        tmp_model = pathlib.Path(tmp) / path.name
        if external:
            ir.save(
                model, tmp_model, external_data=data_name, size_threshold_bytes=_EXTERNAL_THRESHOLD
            )
            os.replace(pathlib.Path(tmp) / data_name, parent / data_name)
        else:
            ir.save(model, tmp_model)
        os.replace(tmp_model, path)
    return path


def check_writable(path: str | os.PathLike) -> None:
    """Raise ModelError unless a model can be written at ``path`` (checked before work starts)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ModelError(
            f"output path {path} is a directory: give a file name such as {path / 'model.onnx'}"
        )
    parent = path.parent
    if not parent.is_dir():
        raise ModelError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ModelError(f"cannot write {path}: permission denied")


def _load_path(path: pathlib.Path) -> ir.Model:
    if not path.exists():
        raise ModelError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not an ONNX model file")
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf raises several unrelated types on bad bytes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path} is not a readable ONNX model ({reason})") from exc
    try:
        _into_memory_if_it_fits(model)
    except OSError as exc:
        raise ModelError(f"{path} refers to external data that cannot be read ({exc})") from exc
    return model


def _into_memory_if_it_fits(model: ir.Model) -> None:
    """Read external tensors into memory when the whole model fits in one protobuf.

    Passes hand models to onnxruntime, onnx's checker and its version converter as serialized bytes,
    where an external reference — a file name relative to the model's folder — no longer resolves.
    Only models past the protobuf limit have to stay external (and lazy); they go to those tools
    through files.
    """
    if tensor_bytes(model) <= _PROTOBUF_LIMIT:
        ir.external_data.load_to_model(model)


def _is_gs_graph(obj: object) -> bool:
    # Checked by name so that importing mpqc never pays for importing onnx_graphsurgeon.
    return type(obj).__name__ == "Graph" and type(obj).__module__.startswith("onnx_graphsurgeon")
