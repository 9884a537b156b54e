"""The evaluator's big tensors on disk, shared by every session it opens.

The fake-quant graph holds each layer's weight at every candidate grid (``[K+1, ...]`` stacks, K+1
times the model's weights). In one protobuf they pass its 2 GB limit on models of a few hundred
megabytes, and every cut-down session (``cut.py``) would copy them again. So every tensor of at
least ``STREAMED_BYTES`` is written once, as it is made, to one data file in the evaluator's
folder, and the graphs refer to it as external data. onnxruntime maps the file rather than reading
it (each tensor starts on a page boundary), so a session costs the pages it touches, not a copy; a
stack's entry fixed at one grid (``entry``) is a reference into the same file. Every session opens
from the graph's serialized bytes (small: no big tensor is inside) with the folder as
onnxruntime's external-initializers folder.
"""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from mpqc.ir.scratch import scratch_folder
from mpqc.passes.lib.runtime import session

__all__ = ["DATA_FILE", "STREAMED_BYTES", "WeightStore", "entry"]

#: Tensors at least this big go to the data file; smaller ones stay inside the graph, where
#: thousands of them cost less than as many mappings.
STREAMED_BYTES = 64 * 1024
#: Where each tensor starts in the data file: onnxruntime maps external data only at offsets
#: aligned to pages.
_ALIGN = 4096
DATA_FILE = "weights.data"


class WeightStore:
    """One evaluator's temporary folder and the data file in it: big tensors appended, sessions
    opened over it. The folder is made on first use (a model with no big tensor and no worker
    process needs none) and removed with the store that made it, not by a copy unpickled in a
    worker."""

    def __init__(self) -> None:
        self._folder: str | None = None

    @property
    def folder(self) -> str:
        if self._folder is None:
            self._folder = scratch_folder("evaluator")
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        return self._folder

    def tensor(self, name: str, array: np.ndarray) -> ir.TensorProtocol:
        """``array`` as the initializer ``name``: in memory when small, else written to the data
        file and referred to there."""
        return self.stack(name, iter([array]), 1, stacked=False)

    def stack(
        self, name: str, entries: Iterator[np.ndarray], count: int, *, stacked: bool = True
    ) -> ir.TensorProtocol:
        """The ``count`` arrays of ``entries`` stacked along a new first axis, as the initializer
        ``name`` (``stacked=False``: the one array itself). A big stack is written one entry at a
        time (a weight stacked at every candidate grid is K+1 times its bytes), else it is made in
        memory."""
        first = np.asarray(next(entries))
        shape = (count, *first.shape) if stacked else first.shape
        if not self.streams(first.nbytes * count):
            rest = [np.asarray(array, first.dtype) for array in entries]
            return ir.tensor(np.stack([first, *rest]) if stacked else first, name=name)
        with open(os.path.join(self.folder, DATA_FILE), "ab") as sink:
            offset = -(-sink.tell() // _ALIGN) * _ALIGN
            sink.write(bytes(offset - sink.tell()))
            sink.write(np.ascontiguousarray(first).data)
            for array in entries:
                sink.write(np.ascontiguousarray(array, first.dtype).data)
            length = sink.tell() - offset
        assert length == first.nbytes * count, f"{name}: entries of different shapes"
        return ir.ExternalTensor(
            DATA_FILE,
            offset,
            length,
            ir.DataType.from_numpy(first.dtype),
            shape=ir.Shape(shape),
            name=name,
            base_dir=self.folder,
        )

    def holds(self, tensor: ir.TensorProtocol) -> bool:
        """Whether ``tensor`` is in this store's data file."""
        return isinstance(tensor, ir.ExternalTensor) and str(tensor.base_dir) == self._folder

    @staticmethod
    def streams(nbytes: int) -> bool:
        """Whether a tensor of ``nbytes`` belongs in the data file."""
        return nbytes >= STREAMED_BYTES

    def session(self, proto: onnx.ModelProto, fast: bool = False) -> ort.InferenceSession:
        """A session on ``proto``, whose external tensors live in this folder (``fast``: see
        ``runtime.session``)."""
        return session(proto.SerializeToString(), fast=fast, folder=self._folder)


def entry(stack: onnx.TensorProto, index: int, name: str) -> onnx.TensorProto:
    """``stack[index]`` as the tensor ``name``: a reference into the data file when the stack is
    stored there (no data read), else its numbers."""
    if stack.data_location != onnx.TensorProto.EXTERNAL:
        return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(stack)[index], name)
    where = {item.key: item.value for item in stack.external_data}
    length = int(where["length"]) // stack.dims[0]
    tensor = onnx.TensorProto(name=name, data_type=stack.data_type, dims=stack.dims[1:])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    offset = int(where.get("offset", 0)) + index * length
    for key, value in (("location", where["location"]), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))
    return tensor
