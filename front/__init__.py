"""mpqc — a mixed-precision quantization compiler for ONNX.

``mpqc.compile(model, mpqc.CompileOptions(hw=..., calibration=...))`` runs the whole compiler;
``mpqc.Pipeline`` runs any pipeline string; ``mpqc.load`` / ``mpqc.save`` read and write models of
any kind the IR accepts.
"""

from mpqc.compiler import CompileResult, compile
from mpqc.ir import load, save
from mpqc.options import CompileOptions
from mpqc.pipeline import Pipeline

__all__ = ["CompileOptions", "CompileResult", "Pipeline", "compile", "load", "save"]
__version__ = "0.1.0"
