"""onnx's ``light_*`` architectures with seeded, realistically scaled weights.

The onnx package ships AlexNet, ResNet-50, DenseNet-121, Inception, ShuffleNet, SqueezeNet, VGG-19
and ZFNet as "light" models: the real graphs, but every weight a ``ConstantOfShape`` (one value
repeated) and some BatchNorm parameters left as graph inputs. A quantizer learns nothing from a
tensor with one value, so each weight is replaced by a seeded draw whose scale follows its role —
He-normal for Conv and Gemm weights, small biases, BatchNorm scales near 1 and variances in
[0.5, 1.5] — which keeps activations in a realistic range through 50+ layers. No trained accuracy
comes with them: the benchmark scores quantized models by fidelity to their float model (SQNR,
top-1 agreement).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["LIGHT_MODELS", "data_input", "light_model"]

#: The architectures, small enough to quantize in seconds to minutes on two cores.
LIGHT_MODELS = (
    "squeezenet",
    "shufflenet",
    "inception_v1",
    "resnet50",
    "densenet121",
    "inception_v2",
    "bvlc_alexnet",
    "zfnet512",
    "vgg19",
)


def _path(name: str) -> str:
    return os.path.join(
        os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx"
    )


def _consumers(model: onnx.ModelProto, name: str) -> Iterator[tuple[onnx.NodeProto, int]]:
    for node in model.graph.node:
        for index, value in enumerate(node.input):
            if value == name:
                yield node, index


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The image input: the graph input read by a Conv as its data operand."""
    for value in model.graph.input:
        if any(
            node.op_type == "Conv" and index == 0 for node, index in _consumers(model, value.name)
        ):
            return value
    raise ValueError("no graph input feeds a Conv's data operand")


def _draw(
    rng: np.random.Generator, model: onnx.ModelProto, name: str, shape: tuple[int, ...]
) -> np.ndarray:
    uses = list(_consumers(model, name))
    role = next(
        ((node.op_type, index) for node, index in uses if node.op_type != "Unsqueeze"),
        ("Unsqueeze", 0),
    )
    if role in (("Conv", 1), ("Gemm", 1)):
        fan_in = (
            int(np.prod(shape[1:]))
            if role[0] == "Conv"
            else int(shape[1] if len(shape) > 1 else shape[0])
        )
        gemm = next(node for node, _ in uses if node.op_type == role[0])
        if role[0] == "Gemm" and not any(a.name == "transB" and a.i for a in gemm.attribute):
            fan_in = int(shape[0])
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    if role == ("BatchNormalization", 1) or "scale" in name or name.endswith("_s_0"):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if role == ("BatchNormalization", 4) or "var" in name or "riv" in name:
        return rng.uniform(0.5, 1.5, shape)
    return 0.05 * rng.standard_normal(shape)


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """The ``light_<name>`` architecture with every placeholder weight replaced by a seeded draw."""
    model = onnx.load(_path(name))
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    image = data_input(model).name
    shapes = {
        init.name: tuple(numpy_helper.to_array(init).astype(np.int64))
        for init in model.graph.initializer
    }
    weights: dict[str, np.ndarray] = {}
    keep = []
    outputs = {value.name for value in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            weights[node.output[0]] = _draw(rng, model, node.output[0], shapes[node.input[0]])
        elif node.op_type == "Softmax" and node.output[0] in outputs:
            for value in model.graph.output:
                if value.name == node.output[0]:
                    value.name = node.input[0]  # the logits become the output
        else:
            keep.append(node)
    for value in model.graph.input:
        if value.name != image and value.name not in shapes:
            dims = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
            weights[value.name] = _draw(rng, model, value.name, dims)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inputs = [v for v in model.graph.input if v.name == image]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    used = {x for node in keep for x in node.input}
    kept_inits = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
    model.graph.initializer.extend(
        numpy_helper.from_array(w.astype(np.float32), n) for n, w in sorted(weights.items())
    )
    model.ir_version = max(model.ir_version, 4)  # IR 3 demands every initializer be a graph input
    onnx.checker.check_model(model)
    return model
