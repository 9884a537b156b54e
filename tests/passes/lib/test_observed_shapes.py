"""Shapes onnx cannot infer, read from runs: inside a Loop whose values grow from trip to trip
(every shape kept, the largest priced, the search runs), in an If branch only a later sample takes,
and a layer no sample runs refused in one line that says what to give."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import build, control_flow, random_inputs

import mpqc
from mpqc.core import MpqcError
from mpqc.passes.lib.observed_shapes import observe_shapes

#: A Loop that appends tanh(s @ W) to its carried sequence: its MatMul reads 1, 2, 4 rows.
GROWING = """
<ir_version: 10, opset_import: ["" : 17]>
growing (float[1,16] x0) => (float[N,16] seq) {
  seq = Loop (trips, keep_going, x0) <
    body = step (int64 i, bool ci, float[M,16] s) => (bool co, float[K,16] so) {
      co = Identity(ci)
      m = MatMul(s, wl)
      t = Tanh(m)
      so = Concat <axis=0> (s, t)
    }
  >
}
"""


def _growing(trips: int = 3) -> onnx.ModelProto:
    arrays = {"trips": np.array(trips, np.int64), "keep_going": np.array(True)}
    return build(GROWING, {"wl": (16, 16)}, seed=0, arrays=arrays)


def test_a_loop_value_that_grows_has_every_trip_shape() -> None:
    proto = _growing()
    observed = observe_shapes(proto, None, ["m", "so"], random_inputs(proto, 1, seed=0))
    assert observed.shapes == {"m": [(1, 16), (2, 16), (4, 16)], "so": [(2, 16), (4, 16), (8, 16)]}
    assert observed.largest()["m"] == (4, 16)


def test_a_search_prices_a_loop_whose_shapes_change_by_trip() -> None:
    proto = _growing()
    result = mpqc.compile(proto, mpqc.CompileOptions(calibration=random_inputs(proto, 6, seed=1)))
    assert [row.layer for row in result.explanation.rows] == ["seq/body/m"]
    (note,) = [note for note in result.notes if "change shape" in note]
    assert "'m' 1x16/2x16/4x16" in note and "priced at the largest" in note


def test_a_branch_the_first_sample_skips_is_read_from_the_next() -> None:
    proto = ir.to_proto(control_flow())
    samples = random_inputs(proto, 2, seed=0)
    samples[0]["go"], samples[1]["go"] = np.array(False), np.array(True)
    observed = observe_shapes(proto, None, ["ct0", "ce"], samples)
    assert observed.shapes == {"ce": [(1, 8, 8, 8)], "ct0": [(1, 8, 8, 8)]}


def test_a_layer_no_sample_runs_is_refused_asking_for_data_that_runs_it() -> None:
    proto = _growing(trips=0)
    with pytest.raises(MpqcError) as error:
        mpqc.compile(proto, mpqc.CompileOptions(calibration=random_inputs(proto, 6, seed=1)))
    message = str(error.value)
    assert "\n" not in message and "symbolic" not in message, message
    assert message.startswith("calibration: layer 'seq/body/m': onnx cannot infer"), message
    assert "give calibration data that runs this layer" in message
