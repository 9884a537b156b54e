"""Refusing, before any work, a model that onnxruntime cannot run or cannot run quantized.

Every analysis runs the model in onnxruntime and the written model is for onnxruntime, so a node
onnxruntime has no op for would only surface after calibration (or, without data, after the whole
compilation, when verify first loads the result). ``check_runnable`` asks onnxruntime's own op
registry instead, while the model is being loaded:

- every node's op must be an op onnxruntime knows — in a domain it has schemas for (ONNX,
  ``ai.onnx.ml``, ``com.microsoft`` contrib ops, ...) — or a function the model itself defines;
  a custom-domain op, or an op of no known name, is refused naming the node, the op and the domain;
- the model's ONNX opset must be one at which onnxruntime runs QuantizeLinear and
  DequantizeLinear, which the lowering writes at the model's opset: a tiny Q/DQ model at that
  opset is loaded to find out (onnx may already know a newer opset than onnxruntime has kernels
  for), and a model past it is refused naming the newest opset that works.

Whether onnxruntime has a kernel for each op at each type is left to the first session (calibrate,
or verify): that is what loading a model checks, and the message then names the op too.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from mpqc.ir.io import ModelError
from mpqc.passes.lib.runtime import session

__all__ = ["check_runnable", "newest_quantizer_opset"]

#: The opset from which mpqc's lowering writes per-channel quantizers (passes/lib/opset.py).
_QUANTIZER_OPSET = 13


@functools.lru_cache(maxsize=1)
def _known_ops() -> dict[str, frozenset[str]]:
    """Op names by domain, from onnxruntime's schema registry ("" for ONNX)."""
    ops: dict[str, set[str]] = {}
    for schema in ort_state.get_all_operator_schema():
        ops.setdefault(schema.domain, set()).add(schema.name)
    return {domain: frozenset(names) for domain, names in ops.items()}


@functools.cache
def _runs_quantizers(opset: int) -> bool:
    """Whether onnxruntime's CPU provider loads QuantizeLinear -> DequantizeLinear at ``opset``."""
    scale = onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero_point = onnx.numpy_helper.from_array(np.array(0, np.uint8), "z")
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "quantizers",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        [scale, zero_point],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=10
    )
    try:
        session(model.SerializeToString())
    except Exception:  # onnxruntime's errors share no base class
        return False
    return True


def newest_quantizer_opset(opset: int) -> int | None:
    """The newest opset at most ``opset`` at which onnxruntime runs the quantizers (None: none
    from opset 13 on)."""
    return next(
        (v for v in range(opset, _QUANTIZER_OPSET - 1, -1) if _runs_quantizers(v)),
        None,
    )


def _unknown_op(model: ir.Model) -> tuple[ir.Node, str] | None:
    """The first node whose op onnxruntime does not know, and why."""
    functions = {(key[0], key[1]) for key in model.functions}
    known = _known_ops()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (node.domain, node.op_type) in functions:
            continue
        if domain not in known:
            return node, f"onnxruntime knows no op domain '{domain}'"
        if node.op_type not in known[domain]:
            where = f"domain '{domain}'" if domain else "ONNX"
            return node, f"onnxruntime has no op {node.op_type} in {where}"
    return None


def check_runnable(model: ir.Model, source: str) -> None:
    """Raise ``ModelError`` (one line) if onnxruntime cannot run ``model``'s ops, or cannot run
    quantizers at its opset (see the module docstring)."""
    unknown = _unknown_op(model)
    if unknown is not None:
        node, reason = unknown
        label = node.name or (node.outputs[0].name if node.outputs else "") or node.op_type
        raise ModelError(
            f"{source}: node '{label}' is {node.domain + '.' if node.domain else ''}"
            f"{node.op_type}, and {reason}: mpqc compiles models onnxruntime's CPU provider runs; "
            "re-export the model without it (or define it as a function in the model)"
        )
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    if opset > _QUANTIZER_OPSET and not _runs_quantizers(opset):
        newest = newest_quantizer_opset(opset)
        raise ModelError(
            f"{source} is at opset {opset}, and onnxruntime {ort.__version__} runs no "
            f"QuantizeLinear/DequantizeLinear at that opset: re-export the model at opset "
            f"{newest} or older"
        )
