"""The numpy layers the digits CNN is trained with, each able to emit itself as ONNX nodes.

Convolutions are im2col (a strided window view, then one matmul) and backpropagation is
hand-written per layer, so training needs nothing beyond numpy. Because every layer also exports
itself, the trained network and the exported graph come from the same description and cannot
drift apart. ``tools/train_digits.py`` builds, trains and exports the network from these.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

# --------------------------------------------------------------------------------------------------
# Export helper


class GraphBuilder:
    """Collects nodes and initializers; each node's single output tensor is named after the node."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op_type: str, inputs: list[str], name: str, **attributes: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name


# --------------------------------------------------------------------------------------------------
# Layers: forward caches what backward needs; backward stores parameter gradients and returns dx.


class Layer:
    """A network layer with parameters (trained), buffers (exported, not trained) and gradients."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def export(self, graph: GraphBuilder, x: str) -> str:
        raise NotImplementedError

    def parameters(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield (qualified name, parameter, gradient) for the optimizer."""
        for key, value in self.params.items():
            yield f"{self.name}.{key}", value, self.grads[key]


class Conv2d(Layer):
    """Square-kernel 2-D convolution, NCHW, as im2col + one matmul."""

    def __init__(
        self,
        name: str,
        c_in: int,
        c_out: int,
        kernel: int,
        rng: np.random.Generator,
        stride: int = 1,
        pad: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(name)
        self.kernel, self.stride, self.pad = kernel, stride, pad
        fan_in = c_in * kernel * kernel
        self.params["weight"] = (
            rng.standard_normal((c_out, c_in, kernel, kernel)) * np.sqrt(2.0 / fan_in)
        ).astype(np.float32)  # He init for ReLU nets
        if bias:
            self.params["bias"] = np.zeros(c_out, np.float32)

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        k, s, p = self.kernel, self.stride, self.pad
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        windows = sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::s, ::s]  # N,C,Ho,Wo,k,k
        n, c, h_out, w_out = windows.shape[:4]
        cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out, c * k * k)
        weight = self.params["weight"]
        y = cols @ weight.reshape(len(weight), -1).T
        if "bias" in self.params:
            y += self.params["bias"]
        self._cache = (x.shape, cols, (n, h_out, w_out))
        return y.reshape(n, h_out, w_out, -1).transpose(0, 3, 1, 2)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        k, s, p = self.kernel, self.stride, self.pad
        x_shape, cols, (n, h_out, w_out) = self._cache
        weight = self.params["weight"]
        dy_rows = dy.transpose(0, 2, 3, 1).reshape(n * h_out * w_out, -1)
        self.grads["weight"] = (dy_rows.T @ cols).reshape(weight.shape)
        if "bias" in self.params:
            self.grads["bias"] = dy_rows.sum(axis=0)
        dcols = (dy_rows @ weight.reshape(len(weight), -1)).reshape(
            n, h_out, w_out, x_shape[1], k, k
        )
        dpadded = np.zeros((n, x_shape[1], x_shape[2] + 2 * p, x_shape[3] + 2 * p), np.float32)
        for i in range(k):  # col2im: scatter each kernel tap back onto the input grid
            for j in range(k):
                dpadded[:, :, i : i + s * h_out : s, j : j + s * w_out : s] += dcols[
                    ..., i, j
                ].transpose(0, 3, 1, 2)
        return dpadded[:, :, p : p + x_shape[2], p : p + x_shape[3]]

    def export(self, graph: GraphBuilder, x: str) -> str:
        inputs = [x] + [
            graph.initializer(f"{self.name}.{key}", value) for key, value in self.params.items()
        ]
        k, p = self.kernel, self.pad
        return graph.node(
            "Conv",
            inputs,
            self.name,
            kernel_shape=[k, k],
            pads=[p, p, p, p],
            strides=[self.stride, self.stride],
        )


class BatchNorm2d(Layer):
    """Batch statistics while training, running statistics (exported) at inference."""

    def __init__(
        self, name: str, channels: int, momentum: float = 0.1, epsilon: float = 1e-5
    ) -> None:
        super().__init__(name)
        self.momentum, self.epsilon = momentum, epsilon
        self.params["scale"] = np.ones(channels, np.float32)
        self.params["bias"] = np.zeros(channels, np.float32)
        self.running_mean = np.zeros(channels, np.float32)
        self.running_var = np.ones(channels, np.float32)

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        if train:
            mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
            count = x.size // x.shape[1]
            self.running_mean += self.momentum * (mean - self.running_mean)
            self.running_var += self.momentum * (var * count / (count - 1) - self.running_var)
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / np.sqrt(var + self.epsilon)
        x_hat = (x - mean[:, None, None]) * inv_std[:, None, None]
        self._cache = (x_hat, inv_std)
        return self.params["scale"][:, None, None] * x_hat + self.params["bias"][:, None, None]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x_hat, inv_std = self._cache
        self.grads["scale"] = (dy * x_hat).sum(axis=(0, 2, 3))
        self.grads["bias"] = dy.sum(axis=(0, 2, 3))
        dx_hat = dy * self.params["scale"][:, None, None]
        return inv_std[:, None, None] * (
            dx_hat
            - dx_hat.mean(axis=(0, 2, 3), keepdims=True)
            - x_hat * (dx_hat * x_hat).mean(axis=(0, 2, 3), keepdims=True)
        )

    def export(self, graph: GraphBuilder, x: str) -> str:
        inputs = [x] + [
            graph.initializer(f"{self.name}.{key}", value)
            for key, value in (
                ("scale", self.params["scale"]),
                ("bias", self.params["bias"]),
                ("mean", self.running_mean),
                ("var", self.running_var),
            )
        ]
        return graph.node("BatchNormalization", inputs, self.name, epsilon=self.epsilon)


class Relu(Layer):
    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self._mask = x > 0
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * self._mask

    def export(self, graph: GraphBuilder, x: str) -> str:
        return graph.node("Relu", [x], self.name)


class GlobalAveragePool(Layer):
    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self._shape = x.shape
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        height, width = self._shape[2:]
        return np.broadcast_to(dy / (height * width), self._shape)

    def export(self, graph: GraphBuilder, x: str) -> str:
        return graph.node("GlobalAveragePool", [x], self.name)


class Flatten(Layer):
    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy.reshape(self._shape)

    def export(self, graph: GraphBuilder, x: str) -> str:
        return graph.node("Flatten", [x], self.name, axis=1)


class Gemm(Layer):
    """Fully connected layer y = x W^T + b, exported as Gemm(transB=1) like PyTorch's Linear."""

    def __init__(self, name: str, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        super().__init__(name)
        self.params["weight"] = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(
            np.float32
        )
        self.params["bias"] = np.zeros(n_out, np.float32)

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self._x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self.grads["weight"] = dy.T @ self._x
        self.grads["bias"] = dy.sum(axis=0)
        return dy @ self.params["weight"]

    def export(self, graph: GraphBuilder, x: str) -> str:
        inputs = [x] + [
            graph.initializer(f"{self.name}.{key}", value) for key, value in self.params.items()
        ]
        return graph.node("Gemm", inputs, self.name, transB=1)


class Sequential(Layer):
    def __init__(self, name: str, layers: list[Layer]) -> None:
        super().__init__(name)
        self.layers = layers

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def export(self, graph: GraphBuilder, x: str) -> str:
        for layer in self.layers:
            x = layer.export(graph, x)
        return x

    def parameters(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for layer in self.layers:
            yield from layer.parameters()


class Residual(Sequential):
    """body(x) + x; the Add is exported as its own node named `<name>.add`."""

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        return super().forward(x, train) + x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return super().backward(dy) + dy

    def export(self, graph: GraphBuilder, x: str) -> str:
        return graph.node("Add", [super().export(graph, x), x], f"{self.name}.add")
