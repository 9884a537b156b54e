"""onnx's light_* architectures (seeded weights, bench/light.py) compile to w8a8 and w4a8 and run.

Slow: each model is a real architecture (up to ResNet-50, 25M parameters). The bench package is
imported from the repository root, which pytest puts on the path (pyproject.toml).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import mpqc
from bench.light import data_input, light_model
from bench.models import prepare

MODELS = ("squeezenet", "shufflenet", "inception_v1", "densenet121", "resnet50", "bvlc_alexnet")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_light_model_compiles_to_w8a8_and_w4a8(name: str) -> None:
    model = prepare(light_model(name))
    image = data_input(model)
    shape = [d.dim_value for d in image.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    samples = [{image.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(6)]
    for choice in ("w8a8", "w4a8"):
        result = mpqc.compile(
            model, mpqc.CompileOptions(hw="x86_avx2", calibration=samples, uniform=choice)
        )
        proto = result.model
        assert isinstance(proto, onnx.ModelProto)  # the caller's kind comes back
        session = ort.InferenceSession(
            proto.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        (out,) = session.run(None, samples[0])[:1]
        assert np.all(np.isfinite(out))
        assert result.report["verify"]["checker"] == "ok"
        assert result.report["verify"]["top1_agreement"] >= 0.0
        assert proto.ByteSize() < model.ByteSize() * (0.3 if choice == "w8a8" else 0.2)
