"""Lowered models load and run in onnxruntime with its default graph optimizations.

onnxruntime rewrites QDQ graphs when it loads them (QLinearConv fusion, Clip-into-Quantize fusion);
those rewrites once rejected sub-byte activation containers, so every activation width is loaded
here the way a user loads it, not with optimizations turned off.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from models import random_inputs, small_cnn

from mpqc.passes import CalibrationData, CompileContext
from mpqc.passes.analysis.calibrate import CalibratePass
from mpqc.passes.lower.lower_qdq import LowerQDQPass


@pytest.mark.parametrize("choice", ["w8a2", "w8a3", "w8a4", "w4a4", "w2a2", "w8a6", "w8a16"])
def test_every_activation_width_loads_with_default_optimizations(choice: str) -> None:
    samples = random_inputs(small_cnn(), 3, batch=2)
    model = ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(small_cnn())))
    context = CompileContext(calibration=CalibrationData(tuple(samples)))
    CalibratePass(context=context)(model)
    LowerQDQPass(context=context, uniform=choice)(model)
    session = ort.InferenceSession(
        ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, samples[0])
    assert logits.shape == (2, 10)
