"""Raising a model's ai.onnx opset in place, for lowering passes that need newer types.

Per-channel DequantizeLinear needs opset 13, INT4/UINT4 need 21 and INT2/UINT2 need 25. The onnx
version converter knows every op's adapters; the converted graph replaces the model's graph, and the
annotations come along because they live in ``metadata_props``, which the proto round trip keeps.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from mpqc.passes.base import PassError

__all__ = ["ensure_opset"]


def ensure_opset(model: ir.Model, minimum: int) -> bool:
    """Raise the model's ai.onnx opset to at least ``minimum``; True if it changed."""
    current = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    if current >= minimum:
        return False
    try:
        converted = onnx.version_converter.convert_version(ir.to_proto(model), minimum)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PassError(
            f"the model is at opset {current} and the chosen bit-widths need opset {minimum}, "
            f"but onnx's version converter failed ({reason}): re-export the model at opset {minimum} "
            "or choose 8-bit weights"
        ) from None
    upgraded = ir.from_proto(converted)
    model.graph = upgraded.graph
    model.ir_version = max(model.ir_version, upgraded.ir_version)
    return True
