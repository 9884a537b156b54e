"""Models onnxruntime cannot run are refused while loading, before any pass
(passes/lib/runnable.py)."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from models import random_inputs

import mpqc
from mpqc.ir.io import ModelError
from mpqc.passes.infra.instruments import Timing
from mpqc.passes.lib.runnable import newest_quantizer_opset
from mpqc.tools import opt

_CONV = """
<ir_version: 10, opset_import: ["" : {opset}{imports}]>
g (float[N,3,8,8] x) => (float[N,8,8,8] y) {{
  c = Conv <pads=[1,1,1,1]> (x, w)
  y = {op} (c)
}}
{functions}
"""
_SQUARE = """
<domain: "my.domain", opset_import: ["" : 17]>
Square (a) => (b) {
  b = Mul (a, a)
}
"""


def _model(op: str, opset: int = 17, imports: str = "", functions: str = "") -> onnx.ModelProto:
    proto = onnx.parser.parse_model(
        _CONV.format(opset=opset, imports=imports, op=op, functions=functions)
    )
    weight = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    return proto


def _compile(proto: onnx.ModelProto) -> tuple[mpqc.CompileResult, Timing]:
    timing = Timing()
    options = mpqc.CompileOptions(
        hw="x86_avx512_vnni",
        calibration=random_inputs(proto, 4),
        uniform="w8a8",
        instruments=(timing,),
    )
    return mpqc.compile(proto, options), timing


@pytest.mark.parametrize(
    ("op", "imports", "expected"),
    [
        ("my.domain.Foo", ', "my.domain" : 1', "node 'y' is my.domain.Foo, and onnxruntime knows "),
        (
            "com.microsoft.NoSuchOp",
            ', "com.microsoft" : 1',
            "onnxruntime has no op NoSuchOp in domain 'com.microsoft'",
        ),
        ("Foo", "", "onnxruntime has no op Foo in ONNX"),
    ],
)
def test_ops_onnxruntime_does_not_know_are_refused_before_any_pass(
    op: str, imports: str, expected: str
) -> None:
    timing = Timing()
    options = mpqc.CompileOptions(
        hw="x86_avx512_vnni", calibration=[{"x": np.zeros((1, 3, 8, 8), np.float32)}]
    )
    with pytest.raises(ModelError, match=expected) as caught:
        mpqc.compile(_model(op, imports=imports), options)
    assert "\n" not in str(caught.value) and "--shape" not in str(caught.value)
    assert timing.seconds == []


def test_contrib_ops_and_model_functions_are_accepted() -> None:
    result, timing = _compile(_model("com.microsoft.FastGelu", imports=', "com.microsoft" : 1'))
    assert [name for name, _ in timing.seconds][:2] == ["canonicalize", "calibrate"]
    assert result.report["lower-qdq"]["lowered_layers"] == 1
    result, _ = _compile(_model("my.domain.Square", imports=', "my.domain" : 1', functions=_SQUARE))
    assert result.report["lower-qdq"]["lowered_layers"] == 1


def test_an_opset_onnxruntime_has_no_quantizers_for_is_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opset = onnx.defs.onnx_opset_version()
    newest = newest_quantizer_opset(opset)
    if newest == opset:
        pytest.skip(f"onnxruntime runs quantizers at every opset onnx knows ({opset})")
    with pytest.raises(
        ModelError, match=f"at opset {opset}.*re-export the model at opset {newest}"
    ):
        _compile(_model("Relu", opset=opset))
    # mpqc-opt refuses it too, in one line, writing nothing
    path = tmp_path / "model.onnx"
    onnx.save(_model("my.domain.Foo", imports=', "my.domain" : 1'), path)
    out = tmp_path / "out.onnx"
    assert opt.main([str(path), "-p", "canonicalize", "-o", str(out)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not out.exists()
