"""ensure_opset: old models upgrade (IR 3 included), and a failed upgrade says what is needed."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from models import run_ort

from mpqc import passes
from mpqc.passes import PassInputError
from mpqc.passes.lib.opset import ensure_opset

# As onnx's backend test models were exported: IR 3, where every initializer is also a graph input.
IR3_CONV = """
<ir_version: 3, opset_import: ["" : 6]>
g (float[1,2,4,4] x, float[3,2,3,3] w, float[3] b) => (float[1,3,4,4] y) {
  c = Conv <pads=[1,1,1,1], kernel_shape=[3,3]> (x, w, b)
  y = Relu(c)
}
"""


def _ir3_conv() -> ir.Model:
    proto = onnx.parser.parse_model(IR3_CONV)
    rng = np.random.default_rng(0)
    for name, shape in (("w", (3, 2, 3, 3)), ("b", (3,))):
        array = rng.normal(size=shape).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.from_proto(proto)


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).normal(size=(1, 2, 4, 4)).astype(np.float32)}


def test_canonicalize_leaves_an_ir3_model_valid() -> None:
    # It takes initializers out of the graph inputs, which IR 3 does not allow.
    model = _ir3_conv()
    passes.get("canonicalize")()(model)
    assert not any(v.is_initializer() for v in model.graph.inputs)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_an_ir3_model_without_initializer_inputs_upgrades() -> None:
    model = _ir3_conv()
    expected = run_ort(ir.to_proto(model), _feeds())[0]
    passes.get("canonicalize")()(model)
    assert ensure_opset(model, 13)
    assert model.opset_imports[""] == 13
    assert model.ir_version == 4
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(run_ort(proto, _feeds())[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("minimum", "needed", "advice"),
    [
        (13, "per-channel QuantizeLinear/DequantizeLinear", "re-export the model at opset 13"),
        (
            21,
            "4- or 16-bit types and blocked quantization",
            "or choose 8-bit weights and activations (opset 13)",
        ),
        (25, "2-bit types", "or choose 8-bit weights and activations (opset 13)"),
    ],
)
def test_a_failed_upgrade_says_what_needs_the_opset_and_what_to_do(
    monkeypatch: pytest.MonkeyPatch, minimum: int, needed: str, advice: str
) -> None:
    def broken(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        raise RuntimeError("adapter missing")

    monkeypatch.setattr(onnx.version_converter, "convert_version", broken)
    with pytest.raises(PassInputError) as info:
        ensure_opset(_ir3_conv(), minimum)
    message = str(info.value)
    assert "\n" not in message
    assert needed in message and advice in message and "adapter missing" in message
    if minimum == 13:
        assert "8-bit" not in message
