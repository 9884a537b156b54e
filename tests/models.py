"""Small models for tests, built from ONNX text with deterministic random weights.

Weights are drawn from a seeded generator and attached as initializers, so the text stays readable
and every test sees the same numbers.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

__all__ = ["SMALL_CNN", "build", "random_inputs", "small_cnn"]

SMALL_CNN = """
<ir_version: 10, opset_import: ["" : 17]>
small_cnn (float[N,3,8,8] image) => (float[N,10] logits) {
  c1 = Conv <pads=[1,1,1,1]> (image, w1, b1)
  r1 = Relu(c1)
  c2 = Conv <pads=[1,1,1,1], strides=[2,2]> (r1, w2, b2)
  r2 = Relu(c2)
  c3 = Conv <pads=[1,1,1,1]> (r2, w3, b3)
  s = Add(c3, r2)
  r3 = Relu(s)
  p = GlobalAveragePool(r3)
  f = Flatten(p)
  logits = Gemm <transB=1> (f, w4, b4)
}
"""

_SMALL_CNN_WEIGHTS = {
    "w1": (8, 3, 3, 3), "b1": (8,),
    "w2": (16, 8, 3, 3), "b2": (16,),
    "w3": (16, 16, 3, 3), "b3": (16,),
    "w4": (10, 16), "b4": (10,),
}


def build(text: str, weights: dict[str, tuple[int, ...]], seed: int = 0) -> onnx.ModelProto:
    """Parse ``text`` and attach He-initialised random initializers of the given shapes."""
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    for name, shape in weights.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        array = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def small_cnn(seed: int = 0) -> ir.Model:
    return ir.from_proto(build(SMALL_CNN, _SMALL_CNN_WEIGHTS, seed))


def random_inputs(model: ir.Model | onnx.ModelProto, count: int, seed: int = 1, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """``count`` input dicts of standard-normal float32 data, symbolic dims set to ``batch``."""
    graph = model.graph
    inputs = graph.input if isinstance(model, onnx.ModelProto) else graph.inputs
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample = {}
        for value in inputs:
            if isinstance(model, onnx.ModelProto):
                dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
                name = value.name
            else:
                dims = [d if isinstance(d, int) else batch for d in value.shape]
                name = value.name
            sample[name] = rng.standard_normal(dims).astype(np.float32)
        samples.append(sample)
    return samples
