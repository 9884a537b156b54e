"""Loading and saving models, whatever kind the caller holds.

mpqc works on ``onnx_ir.Model`` internally, but users and toolchains arrive with a path, an
``onnx.ModelProto``, an ``onnx_ir.Model`` or an ``onnx_graphsurgeon.Graph``. ``load`` turns any of
them into an ``onnx_ir.Model``; ``as_kind`` turns the result back into the caller's kind, so public
entry points hand back what they were given.

A model is user input, so ``load`` checks what would otherwise surface deep inside a pass as an
"internal error": a path must be a regular file no larger than a protobuf can be (a device such as
``/dev/zero`` would be read until memory runs out), the model must have a graph at an opset onnx
knows, every tensor's data must match its shape (external data included), and no graph may feed a
node's output back to it.

A big model (past ``_ON_DISK_ABOVE``) that ``load`` made keeps its tensors on disk, read on demand:
external data where it is, tensors its file held inline moved to a temporary data file. Passes
then hand it to onnxruntime and onnx's tools by reference to that folder (``external_folder``) and
hold only the weights they are using, instead of copies of all of them per serialization.

``write`` puts models whose tensors pass the protobuf limit (2 GB) in external data automatically;
``mpqc.ir.outputs`` makes the write atomic, together with the rest of a run's files.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from mpqc.core.errors import MpqcError
from mpqc.ir.scratch import scratch_folder

__all__ = [
    "EXTERNAL_FILES",
    "IR_INITIALIZERS_APART",
    "ModelError",
    "ModelLike",
    "as_kind",
    "check",
    "external_folder",
    "fits_in_protobuf",
    "load",
    "tensor_bytes",
    "write",
]

#: Anything ``load`` accepts.
ModelLike = Any  # str | os.PathLike | onnx.ModelProto | onnx_ir.Model | onnx_graphsurgeon.Graph

#: Protobuf refuses to serialize messages over 2 GiB; stay clear of it with a margin for the graph.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20
#: No serialized protobuf can be larger; a model file that is was not written by onnx.
_PROTOBUF_MAX = 2**31
#: Tensors at least this big go to the external data file when a model is saved externally.
_EXTERNAL_THRESHOLD = 1024
#: A model whose tensors pass this many bytes keeps them on disk (``_keep_on_disk``), as one past
#: the protobuf limit must.
_ON_DISK_ABOVE = 256 * 2**20
#: Where each tensor starts in a data file mpqc writes: onnxruntime maps external data only at
#: offsets aligned to pages.
_ALIGN = 4096
#: The first IR version in which an initializer need not also be a graph input.
IR_INITIALIZERS_APART = 4
#: ``model.meta`` key (no ``mpqc.`` prefix: not an annotation): the external data files a model
#: loaded from a path read, inputs as much as the model file (no output may be written over one).
EXTERNAL_FILES = "external_data_files"
#: ``model.meta`` key: the ``_Spill`` holding a big model's tensors that its file held inline.
_SPILL = "spilled_tensors"


class ModelError(MpqcError):
    """The input is not a usable ONNX model (missing, truncated, not ONNX, unsupported kind)."""


def load(model: ModelLike, base_dir: str | os.PathLike | None = None) -> ir.Model:
    """Return an ``onnx_ir.Model`` for a path, ``ModelProto``, ``onnx_ir.Model`` or ``gs.Graph``.

    An ``onnx_ir.Model`` is returned as is (passes edit it in place, as onnx_ir passes do); other
    kinds are converted. ``base_dir`` locates external data for a ``ModelProto`` that references it.
    Every kind is checked as the module docstring says; a failure is a one-line ``ModelError``.
    """
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        loaded = _load_path(pathlib.Path(model))
    elif isinstance(model, ir.Model):
        source, loaded = "the model", model
    elif isinstance(model, onnx.ModelProto):
        source, loaded = "the model", ir.from_proto(model)
        if base_dir is not None:
            ir.external_data.set_base_dir(loaded.graph, base_dir)
            _into_memory_if_it_fits(loaded, source)
    elif _is_gs_graph(model):
        import onnx_graphsurgeon as gs

        source, loaded = "the graph", ir.from_proto(gs.export_onnx(model))
    else:
        raise ModelError(
            f"cannot load a {type(model).__name__}: pass a path, an onnx.ModelProto, an "
            "onnx_ir.Model or an onnx_graphsurgeon.Graph"
        )
    _check_model(loaded, source)
    if loaded is not model:  # a model of the caller's own is not rewritten behind its back
        _keep_on_disk(loaded)
    return loaded


def as_kind(model: ir.Model, like: ModelLike) -> ModelLike:
    """Convert ``model`` to the kind of ``like`` (a path-like gives an ``onnx_ir.Model``)."""
    if isinstance(like, onnx.ModelProto):
        return ir.to_proto(model)
    if _is_gs_graph(like):
        import onnx_graphsurgeon as gs

        return gs.import_onnx(ir.to_proto(model))
    return model


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of all constant tensors of ``model``: initializers and ``Constant`` nodes' tensors,
    inside If/Loop/Scan bodies too."""
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
        for node in graph:
            if _is_constant(node) and (held := node.attributes.get("value")) is not None:
                total += held.as_tensor().nbytes
    return total


def _is_constant(node: ir.Node) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


def file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of the model file at ``path`` and of the external data files it refers to
    (a model's weights are often all in its ``.data`` file)."""
    path = pathlib.Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in _tensors(proto.graph)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    files = {(path.parent / location).resolve() for location in locations}
    return path.stat().st_size + sum(f.stat().st_size for f in files if f.is_file())


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and node attributes, bodies included."""
    for body in _bodies(graph):
        yield from body.initializer
        for node in body.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def external_folder(model: ir.Model) -> str | None:
    """The one folder holding ``model``'s external tensors, or None if it has none."""
    folders = {
        str(value.const_value.base_dir)
        for graph in (model.graph, *model.graph.subgraphs())
        for value in graph.initializers.values()
        if isinstance(value.const_value, ir.ExternalTensor)
    }
    if len(folders) > 1:
        raise ModelError(
            f"the model's external tensors live in several folders ({', '.join(sorted(folders))}); "
            "save the model to one folder first"
        )
    return folders.pop() if folders else None


def check(proto: onnx.ModelProto) -> None:
    """``onnx.checker``'s full check of ``proto``, a model's graph serialized as the passes hold it.

    Its external tensors are checked as the typed graph inputs they stand for: a serialized graph's
    reference to a data file does not resolve (the checker looks for it from the working
    directory), and ``load`` checked their data. What the checker sees of a big tensor is its type
    and shape, which an input declares as well. A tensor of an If/Loop/Scan body becomes an input
    of the main graph, which the body reads from the enclosing scope (names are unique across a
    model's graphs)."""
    if any(_external_initializers(proto.graph)):
        checked = onnx.ModelProto()
        checked.CopyFrom(proto)
        inputs = {value.name for value in checked.graph.input}
        checked.graph.input.extend(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
            for t in _take_external_initializers(checked.graph)
            if t.name not in inputs
        )
        proto = checked
    onnx.checker.check_model(proto, full_check=True)


def _bodies(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every If/Loop/Scan body in it, nested ones included."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for body in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _bodies(body)


def _external_initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    for body in _bodies(graph):
        for tensor in body.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                yield tensor


def _take_external_initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Remove the external initializers of ``graph`` and its bodies; the removed ones."""
    taken = []
    for body in _bodies(graph):
        kept = [t for t in body.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        taken += [t for t in body.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        del body.initializer[:]
        body.initializer.extend(kept)
    return taken


def fits_in_protobuf(model: ir.Model) -> bool:
    """Whether ``model`` serializes as one protobuf (else its tensors need external data)."""
    return tensor_bytes(model) <= _PROTOBUF_LIMIT


def write(model: ir.Model, path: pathlib.Path, data_name: str) -> bool:
    """Write ``model`` to ``path``; whether its tensors went to ``data_name`` beside it.

    Only models whose tensors would overflow a single protobuf get external data; the others are
    written whole, external tensors read in (a model loaded past the limit may fit once lowered).
    The write is not atomic: ``mpqc.ir.outputs`` stages it and renames the files into place.
    """
    if fits_in_protobuf(model):
        ir.external_data.load_to_model(model)
        ir.save(model, path)
        return False
    ir.save(model, path, external_data=data_name, size_threshold_bytes=_EXTERNAL_THRESHOLD)
    return True


def _load_path(path: pathlib.Path) -> ir.Model:
    if not path.exists():
        raise ModelError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not an ONNX model file")
    if not path.is_file():
        raise ModelError(
            f"{path} is not a regular file (a device, FIFO or socket): give an ONNX model file"
        )
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{path} is empty: give an ONNX model file")
    if size > _PROTOBUF_MAX:
        raise ModelError(
            f"{path} is {size} bytes, larger than an ONNX protobuf can be (2 GiB): a model that "
            "big keeps its tensors in external data"
        )
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf raises several unrelated types on bad bytes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path} is not a readable ONNX model ({reason})") from exc
    model.meta[EXTERNAL_FILES] = tuple(
        sorted(
            {
                pathlib.Path(value.const_value.path)
                for graph in (model.graph, *model.graph.subgraphs())
                for value in graph.initializers.values()
                if isinstance(value.const_value, ir.ExternalTensor)
            }
        )
    )
    _into_memory_if_it_fits(model, str(path))
    return model


def _on_disk(model: ir.Model) -> bool:
    """Whether ``model``'s tensors are big enough to stay on disk: past the protobuf limit they
    must; past ``_ON_DISK_ABOVE``, copies of them (serialized graphs, onnxruntime's own) cost more
    than reading them where they are."""
    return tensor_bytes(model) > min(_ON_DISK_ABOVE, _PROTOBUF_LIMIT)


def _into_memory_if_it_fits(model: ir.Model, source: str) -> None:
    """Read external tensors into memory unless the model's tensors stay on disk (``_on_disk``):
    a small model goes to onnxruntime and onnx's tools as one serialized protobuf; a big one by
    reference to its data's folder (``external_folder``)."""
    if not _on_disk(model):
        try:
            ir.external_data.load_to_model(model)
        except (OSError, ValueError) as exc:  # missing file; data shorter than the tensor
            raise ModelError(
                f"{source} refers to external data that cannot be read ({exc}): "
                "keep the data file next to the model, complete"
            ) from exc


class StreamedTensor(ir.ExternalTensor):
    """An external tensor whose numbers are read from its file each time they are asked for, and
    not kept.

    onnx_ir's external tensor maps its whole data file once read and keeps the mapping until
    released, so every weight a pass reads of a model that stays on disk would stay resident: a
    pass reading each weight once would hold them all. Read this way, a pass holds the weights it
    is using. Packed types (4-bit, 2-bit) keep onnx_ir's reading. ``owner``, when set, is what
    removes the file once no tensor refers to it (``_Spill``).
    """

    __slots__ = ("owner",)

    def __init__(self, *args: Any, owner: object = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def numpy(self) -> np.ndarray:
        dtype = self.dtype.numpy()
        if self.dtype.bitwidth < 8 or self._array is not None:
            return super().numpy()
        count = int(np.prod(self.shape.numpy()))
        array = np.fromfile(self.path, dtype, count, offset=self.offset or 0)
        if array.size != count:
            raise ValueError(f"{self.path} holds {array.size} values of {self.name}, not {count}")
        return array.reshape(self.shape.numpy())

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)


class _Spill:
    """A temporary data file holding a big model's tensors that its file held inline; removed with
    the model and the last tensor that refer to it (the model holds it in ``meta``: a
    compilation's float reference, serialized by reference to the file, needs it after lowering
    replaced the model's float tensors)."""

    def __init__(self) -> None:
        self.folder = scratch_folder("weights")
        self.location = "weights.data"
        weakref.finalize(self, shutil.rmtree, self.folder, True)

    def write(self, tensor: ir.TensorProtocol) -> StreamedTensor:
        """``tensor``'s bytes appended at the next aligned offset; the tensor that reads them."""
        data = tensor.tobytes()
        with open(os.path.join(self.folder, self.location), "ab") as sink:
            offset = -(-sink.tell() // _ALIGN) * _ALIGN
            sink.write(bytes(offset - sink.tell()))
            sink.write(data)
        return StreamedTensor(
            self.location,
            offset,
            len(data),
            tensor.dtype,
            shape=tensor.shape,
            name=tensor.name or "",
            doc_string=tensor.doc_string,
            metadata_props=tensor.metadata_props,
            base_dir=self.folder,
            owner=self,
        )


def _keep_on_disk(model: ir.Model) -> None:
    """Leave a big model's tensors on disk (``_on_disk``), read on demand (``StreamedTensor``): its
    external tensors where they are, and, when its file held them all inline, each at least
    ``_EXTERNAL_THRESHOLD`` bytes moved to a temporary data file (``_Spill``).

    ``Constant`` nodes become initializers first, as ``canonicalize`` makes them: exporters put
    whole weights in them, inside If/Loop/Scan bodies too, and a node's attribute can only hold
    its tensor in memory (onnx_ir loads and saves initializers only as external data). An IR 3
    model keeps them: its initializers must be graph inputs, which a body's cannot be."""
    if not _on_disk(model):
        return
    if model.ir_version >= IR_INITIALIZERS_APART:
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    values = [
        value
        for graph in (model.graph, *model.graph.subgraphs())
        for value in graph.initializers.values()
        if value.const_value is not None
    ]
    spill = None
    if not any(isinstance(value.const_value, ir.ExternalTensor) for value in values):
        spill = model.meta[_SPILL] = _Spill()
    for value in values:
        tensor = value.const_value
        assert tensor is not None
        if type(tensor) is ir.ExternalTensor:
            value.const_value = StreamedTensor(
                tensor.location,
                tensor.offset,
                tensor.length,
                tensor.dtype,
                shape=tensor.shape,
                name=tensor.name,
                doc_string=tensor.doc_string,
                metadata_props=tensor.metadata_props,
                base_dir=tensor.base_dir,
            )
        elif spill is not None and tensor.nbytes >= _EXTERNAL_THRESHOLD:
            value.const_value = spill.write(tensor)


def _check_model(model: ir.Model, source: str) -> None:
    """Refuse a model without outputs, an opset newer than onnx's, a tensor whose data does not
    match its shape, a cycle."""
    if not model.graph.outputs:
        raise ModelError(f"{source} has no graph outputs: not an ONNX model, or an empty one")
    opset, newest = model.opset_imports.get("", 1), onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelError(
            f"{source} is at opset {opset}, newer than the installed onnx knows ({newest}): "
            f"re-export the model at opset {newest} or older"
        )
    for graph in (model.graph, *model.graph.subgraphs()):
        tensors = [(v.name, v.const_value) for v in graph.initializers.values()]
        tensors += [
            (node.outputs[0].name if node.outputs else node.name, attr.value)
            for node in graph
            for attr in node.attributes.values()
            if attr.type == ir.AttributeType.TENSOR
        ]
        for name, tensor in tensors:
            if tensor is not None:
                _check_tensor(name, tensor, source)
        cycle = _node_on_a_cycle(graph)
        if cycle is not None:
            outputs = ", ".join(repr(v.name) for v in cycle.outputs)
            raise ModelError(
                f"{source}: graph {graph.name or 'main'!r} has a cycle through the "
                f"{cycle.op_type} node {cycle.name!r} (output {outputs}): an ONNX graph must be "
                "acyclic; re-export the model"
            )


def _check_tensor(name: str | None, tensor: ir.TensorProtocol, source: str) -> None:
    # Converting is how onnx_ir finds a mismatch (a view, no copy, for raw and external data):
    # ValueError from numpy's reshape or a short buffer, AssertionError from a wrong typed field.
    # An external tensor maps its file to check it; unmapped again, a model of thousands of them
    # does not hold thousands of file descriptors.
    try:
        tensor.numpy()
    except (ValueError, AssertionError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"{source}: tensor {name!r} holds data that does not match its shape "
            f"{list(tensor.shape)} ({reason}): re-export the model"
        ) from exc
    finally:
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()


def _node_on_a_cycle(graph: ir.Graph) -> ir.Node | None:
    """A node on a cycle of ``graph``'s data edges, or None (Kahn's algorithm; order untouched)."""
    nodes = list(graph)
    here = {id(node) for node in nodes}
    waiting = {
        id(node): sum(1 for v in node.inputs if v is not None and id(v.producer()) in here)
        for node in nodes
    }
    ready = [node for node in nodes if waiting[id(node)] == 0]
    while ready:
        node = ready.pop()
        for output in node.outputs:
            for user, _ in output.uses():
                if id(user) in waiting:
                    waiting[id(user)] -= 1
                    if waiting[id(user)] == 0:
                        ready.append(user)
    return next((node for node in nodes if waiting[id(node)] > 0), None)


def _is_gs_graph(obj: object) -> bool:
    # Checked by name so that importing mpqc never pays for importing onnx_graphsurgeon.
    return type(obj).__name__ == "Graph" and type(obj).__module__.startswith("onnx_graphsurgeon")
