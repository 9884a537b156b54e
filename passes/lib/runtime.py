"""onnxruntime sessions as mpqc's passes open them: CPU provider, one thread, quiet.

Analyses (calibrate, the evaluator) need repeatable numbers: one intra-op thread, sequential
execution, deterministic compute and only the basic graph rewrites, so that every value they observe
is one the model itself defines. Verification instead runs the model the way a user's session
will, with every optimization (that is where onnxruntime fuses integer kernels), so it asks for
``optimize=True``. Between the two, ``fast=True`` keeps the repeatable settings but every graph
optimization, for runs that observe only a graph's outputs and whose graph holds no Q/DQ pair to
fuse into an integer kernel: the evaluator's float prefix, suffix and reference runs. There
onnxruntime's blocked-layout (NCHWc) convolutions and fusions change results only by float
rounding and make the sensitivity analysis faster (bench/RESULTS.md §4b).

A model as the passes hold it may keep big tensors in external data (a model past the protobuf
limit stays external and lazy): ``model_session`` hands such a model to onnxruntime by reference —
its serialized graph, small, with the data's folder as onnxruntime's external-initializers folder,
where onnxruntime maps the data rather than copying it — and only a graph that still does not fit
in one protobuf goes through a temporary file.
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from mpqc.ir.io import external_folder

__all__ = ["external_folder", "model_session", "session", "session_options"]

#: Protobuf cannot serialize a message over 2 GiB; bigger graphs go to onnxruntime through a file.
_PROTOBUF_LIMIT = 2**31 - 64 * 2**20


def session_options(*, optimize: bool = False, fast: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if fast
            else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        )
        options.use_deterministic_compute = True
    return options


def session(
    model: bytes | str,
    *,
    optimize: bool = False,
    fast: bool = False,
    options: ort.SessionOptions | None = None,
    folder: str | None = None,
) -> ort.InferenceSession:
    """A CPU session on serialized bytes or a path (``options`` from ``session_options`` to add
    entries) whose external tensors, if any, live in ``folder``."""
    options = options or session_options(optimize=optimize, fast=fast)
    if folder is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", folder
        )
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def model_session(
    proto: onnx.ModelProto,
    folder: str | None,
    *,
    optimize: bool = False,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """A session on ``proto`` (e.g. ``ir.to_proto`` of a model, edited), whose external tensors
    live in ``folder`` (``external_folder``), without copying them."""
    if proto.ByteSize() < _PROTOBUF_LIMIT:
        return session(proto.SerializeToString(), optimize=optimize, options=options, folder=folder)
    with tempfile.TemporaryDirectory(prefix="mpqc-session-") as temporary:
        path = os.path.join(temporary, "model.onnx")
        onnx.save_model(proto, path, save_as_external_data=True, location="model.onnx.data")
        return session(path, optimize=optimize, options=options, folder=folder)
