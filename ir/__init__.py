"""mpqc's IR: onnx_ir models plus typed annotations, a deterministic printer and graph views.

Not a second IR: ``onnx_ir.Model`` is the core (mutable, typed, lazy external tensors). This
package adds what a quantization compiler needs on top and knows nothing of passes, specs or search.
"""

from mpqc.ir import annotations
from mpqc.ir.annotations import AnnotationKey
from mpqc.ir.graphs import data_flow, topological_nodes
from mpqc.ir.io import ModelError, as_kind, file_bytes, load, tensor_bytes
from mpqc.ir.layers import Layer, constant_array, quantizable_layers
from mpqc.ir.outputs import OutputError, Outputs, save
from mpqc.ir.printer import dump

__all__ = [
    "AnnotationKey",
    "Layer",
    "ModelError",
    "OutputError",
    "Outputs",
    "annotations",
    "as_kind",
    "constant_array",
    "data_flow",
    "dump",
    "file_bytes",
    "load",
    "quantizable_layers",
    "save",
    "tensor_bytes",
    "topological_nodes",
]
