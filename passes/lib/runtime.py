"""onnxruntime sessions as mpqc's passes open them: CPU provider, one thread, quiet.

Analyses (calibrate, the evaluator) need repeatable numbers: one intra-op thread, sequential
execution, deterministic compute and only the basic graph rewrites, so that every value they observe
is one the model itself defines. Verification instead runs the model the way a user's session
will, with every optimization (that is where onnxruntime fuses integer kernels), so it asks for
``optimize=True``.
"""

from __future__ import annotations

import onnxruntime as ort

__all__ = ["session_options", "session"]


def session_options(*, optimize: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.use_deterministic_compute = True
    return options


def session(
    model: bytes | str, *, optimize: bool = False, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """A CPU session on serialized bytes or a path (``options`` from ``session_options`` to add
    entries)."""
    return ort.InferenceSession(
        model, options or session_options(optimize=optimize), providers=["CPUExecutionProvider"]
    )
