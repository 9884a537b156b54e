"""Static shapes for costs: --shape overrides, the calibration data's shapes, a batch of one."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from mpqc.passes import CalibrationData, CompileContext, PassInputError
from mpqc.passes.lib.describe import static_shapes

# Width is symbolic and unnamed, as in PP-OCR's recognizer; the batch is a named dim.
TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N,2,4,?] x) => (float[N,3,4,?] y) <float[3,2,1,1] w = {1,2,3,4,5,6}> {
  y = Conv(x, w)
}
"""


def _model() -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(TEXT))


def test_calibration_samples_give_the_shapes() -> None:
    context = CompileContext(
        calibration=CalibrationData(({"x": np.zeros((1, 2, 4, 40), np.float32)},))
    )
    assert static_shapes(_model(), context)["y"] == (1, 3, 4, 40)
    assert any("first calibration sample" in note for note in context.notes)


def test_whole_input_override_wins() -> None:
    context = CompileContext(
        shapes={"x": (2, 2, 4, 9)},
        calibration=CalibrationData(({"x": np.zeros((1, 2, 4, 40), np.float32)},)),
    )
    assert static_shapes(_model(), context)["y"] == (2, 3, 4, 9)


def test_without_data_an_unnamed_dim_is_a_clear_error() -> None:
    with pytest.raises(PassInputError, match=r"^shapes: .* give x=d0,d1"):
        static_shapes(_model(), CompileContext(shapes={"N": 4}))


def test_a_whole_shape_of_the_wrong_rank_is_refused() -> None:
    with pytest.raises(PassInputError, match="gives 2 dims"):
        static_shapes(_model(), CompileContext(shapes={"x": (1, 2)}))


def test_shapes_onnx_cannot_infer_come_from_a_run_on_calibration_data() -> None:
    # NonZero's output length depends on the data: only running the model tells it.
    model = ir.from_proto(
        onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[4] x) => (float[?,3] y) <float[1,3] w = {1,2,3}> {
      nz = NonZero(x)
      t = Transpose(nz)
      f = Cast <to=1> (t)
      y = MatMul(f, w)
    }
    """)
    )
    sample = {"x": np.array([0.0, 1.0, 2.0, 0.0], np.float32)}
    context = CompileContext(calibration=CalibrationData((sample,)))
    assert static_shapes(model, context)["y"] == (2, 3)
    assert any("the first calibration sample that computes" in note for note in context.notes)
