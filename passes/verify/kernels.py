"""verify's account of what onnxruntime runs for every quantized layer.

The size of a quantized model is in the file; its speed is in the kernels onnxruntime picks once it
has fused the Q/DQ patterns, and a layer the search chose at low bits that ends up as a
DequantizeLinear feeding a float kernel saves bytes and costs time. So after lowering, ``verify``
reads onnxruntime's optimized graph (``passes/lib/fusion.py``, the same rule the plan's test
checks against) and lists, for each layer with quantized weights (inside If/Loop/Scan bodies too,
by its scoped name): its bits, the op onnxruntime runs and its kind (``Kernel``), and the kernel the
lowering plan named for it (``lower-qdq``'s ``kernels``, what the cost pass priced).

A warning, with its reason, goes with every layer that runs as DequantizeLinear + float and every
layer whose kernel is not the plan's: both mean the predicted latency is not what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.ir.layers import scoped_nodes
from mpqc.passes.lib.fusion import OptimizedGraph
from mpqc.passes.lib.plan import Kernel, fusable

__all__ = ["DEQUANTIZE_FLOAT", "kernel_report", "quantized_layers"]

#: How a layer that runs a float kernel behind its weight's DequantizeLinear is named.
DEQUANTIZE_FLOAT = "DequantizeLinear + float"
#: Ops that hold a table (the lookup has no activation input to quantize).
_TABLES = frozenset({"Gather"})


def quantized_layers(model: ir.Model) -> list[tuple[str, ir.Node]]:
    """(scoped name, node) of the layers with quantized weights (the nodes ``mpqc.bits``
    annotates), inside If/Loop/Scan bodies too."""
    return [(name, node) for name, node in scoped_nodes(model.graph) if _quantized(node)]


def kernel_report(
    layers: list[tuple[str, ir.Node]],
    optimized: OptimizedGraph,
    planned: Mapping[str, str],
    ops: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{"layers": [...], "warnings": [...]}`` for ``layers`` (``quantized_layers``) in
    onnxruntime's ``optimized`` graph; ``planned``: the plan's kernel by layer name; ``ops``: the
    model's op of each layer whose node the lowering replaced (a dynamic range's layer ends in a
    Mul), which the rows name rather than the replacement."""
    rows, warnings = [], []
    for name, node in layers:
        chosen = annotations.BITS.get(node)
        assert chosen is not None
        bits = annotations.chosen_bits(chosen)
        fused = optimized.runs(node)
        op = (ops or {}).get(name, node.op_type)
        row: dict[str, Any] = {
            "layer": name,
            "op": op,
            "bits": str(bits),
            "runs": None if fused is None else fused.op,
            "kernel": None if fused is None else fused.kernel.value,
        }
        if name in planned:
            row["planned"] = planned[name]
        rows.append(row)
        warning = _warning(name, op, bits, row)
        if warning is not None:
            warnings.append(warning)
    return {"layers": rows, "warnings": warnings}


def _quantized(node: ir.Node) -> bool:
    chosen = annotations.BITS.get(node)
    return chosen is not None and int(chosen["w"]) != FLOAT_BITS


def _warning(name: str, op: str, bits: Bits, row: Mapping[str, Any]) -> str | None:
    """The layer's warning: it runs in float (and why), or not the plan's kernel; None if
    neither."""
    at = f"{name} at {bits.text()}"
    kernel, planned = row["kernel"], row.get("planned")
    if kernel is None:
        return f"{at}: not found in onnxruntime's optimized graph"
    differs = planned is not None and planned != kernel
    expected = f"the plan predicted {planned} (what the cost pass priced)"
    if kernel == Kernel.DEQUANTIZE_FLOAT.value:
        text = f"{at} runs as {DEQUANTIZE_FLOAT} {row['runs']}: {_why_float(op, bits, planned)}"
        return text + (f"; {expected}" if differs else "")
    if differs:
        return f"{at} runs as {row['runs']} ({kernel}); {expected}"
    return None


def _why_float(op: str, bits: Bits, planned: str | None) -> str:
    """Why onnxruntime runs the layer's float kernel behind a DequantizeLinear."""
    kind = op.lower()
    if op in _TABLES:
        return (
            f"onnxruntime has no {bits.w}-bit table lookup here, so the whole table is "
            "dequantized on every run"
        )
    if op not in ("Conv", "Gemm", "MatMul"):
        return f"onnxruntime has no quantized {op} kernel"
    if bits.float_activations:
        return f"onnxruntime has no {kind} kernel for {bits.w}-bit weights and float activations"
    if not fusable(bits.w, 8):
        return f"onnxruntime has no {bits.w}-bit {kind} kernel"
    if not fusable(8, bits.a):
        return f"onnxruntime has no integer {kind} kernel for {bits.a}-bit activations"
    if planned == Kernel.DEQUANTIZE_FLOAT.value:
        return (
            "no quantizer follows its output (the model's output stays float), which "
            "onnxruntime's integer kernel needs"
        )
    return "onnxruntime did not fuse its QuantizeLinear/DequantizeLinear into an integer kernel"
