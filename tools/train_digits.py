"""Train the digits CNN that mpqc ships as its embedded default model.

Why it exists: `mpqc` must be runnable, and testable for a real accuracy number, without the user
bringing a model or a data set. scikit-learn bundles `load_digits` (1797 grayscale 8x8 digits, no
download), which is enough to train a small CNN to a real accuracy quickly on a CPU (accuracy and
training time: bench/RESULTS.md §1).

Why pure numpy: the only heavy dependency is one the project already has. Convolutions are im2col
(a strided window view, then one matmul), backpropagation is hand-written per layer, the optimizer
is Adam with a cosine learning-rate decay. Each layer also knows how to emit itself as ONNX nodes,
so the trained network and the exported graph come from the same description and cannot drift apart.

Why this architecture: it exercises a quantizer the way real CNNs do. A separate BatchNormalization
(with trained running statistics) after a bias-free Conv gives BN folding real work; a strided Conv,
a residual Add, a 1x1 Conv, GlobalAveragePool and a Gemm head cover the usual layer kinds:

    Conv(1->16, 3x3) -> BN -> Relu -> Conv(16->32, 3x3, stride 2) -> Relu
    -> [Conv(32->32) -> Relu -> Conv(32->32)] + skip -> Relu
    -> Conv(32->64, 1x1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(64->10)

Outputs (both reproducible byte for byte for a fixed seed on a given numpy/OpenBLAS build and CPU
kind; BLAS runs single-threaded because OpenBLAS rounds differently with different thread counts):
  * `mpqc/models/digits_cnn.onnx` — opset 17, float32, input "image" [N,1,8,8], output "logits"
    [N,10].
  * `mpqc/models/digits.npz` — the calibration (200) and evaluation (300) splits; train is not
    shipped.

Run: `python tools/train_digits.py [--out-dir DIR] [--seed N] [--epochs N]`.
"""

from __future__ import annotations

import argparse
import hashlib
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

MODEL_FILE = "digits_cnn.onnx"
DATA_FILE = "digits.npz"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17
IR_VERSION = (
    8  # the IR version that goes with opset 17: loadable by every runtime that runs opset 17
)
CALIB_SIZE = 200
EVAL_SIZE = 300
PIXEL_MAX = 16.0  # load_digits pixels are integers 0..16


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


def build_network(rng: np.random.Generator) -> Sequential:
    return Sequential(
        "net",
        [
            Conv2d(
                "stem.conv", 1, 16, 3, rng, pad=1, bias=False
            ),  # bias-free: the BN that follows has one
            BatchNorm2d("stem.bn", 16),
            Relu("stem.relu"),
            Conv2d("down.conv", 16, 32, 3, rng, stride=2, pad=1),
            Relu("down.relu"),
            Residual(
                "block",
                [
                    Conv2d("block.conv1", 32, 32, 3, rng, pad=1),
                    Relu("block.relu1"),
                    Conv2d("block.conv2", 32, 32, 3, rng, pad=1),
                ],
            ),
            Relu("block.relu2"),
            Conv2d("expand.conv", 32, 64, 1, rng),
            Relu("expand.relu"),
            GlobalAveragePool("pool"),
            Flatten("flatten"),
            Gemm("head.fc", 64, 10, rng),
        ],
    )


# --------------------------------------------------------------------------------------------------
# Data, training, evaluation


@dataclass(frozen=True)
class Splits:
    train_image: np.ndarray
    train_label: np.ndarray
    calib_image: np.ndarray
    calib_label: np.ndarray
    eval_image: np.ndarray
    eval_label: np.ndarray


def load_splits(seed: int) -> Splits:
    """Disjoint stratified train / calibration / evaluation splits of load_digits, pixels in
    [0, 1]."""
    from sklearn.datasets import load_digits  # imported here: only this dev tool needs scikit-learn
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / PIXEL_MAX).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    train, held_out = train_test_split(
        index, test_size=CALIB_SIZE + EVAL_SIZE, stratify=labels, random_state=seed
    )
    calib, evaluation = train_test_split(
        held_out, test_size=EVAL_SIZE, stratify=labels[held_out], random_state=seed
    )
    train, calib, evaluation = np.sort(train), np.sort(calib), np.sort(evaluation)
    return Splits(
        images[train],
        labels[train],
        images[calib],
        labels[calib],
        images[evaluation],
        labels[evaluation],
    )


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1.0
    return float(-log_probs[rows, labels].mean()), grad / len(labels)


class Adam:
    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.step_count = 0
        self.moments: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def step(self, network: Layer, lr_scale: float) -> None:
        """One update of every parameter in place; weight decay is decoupled (AdamW)."""
        self.step_count += 1
        beta1, beta2 = self.betas
        lr = self.lr * lr_scale
        for name, param, grad in network.parameters():
            m, v = self.moments.get(name, (np.zeros_like(param), np.zeros_like(param)))
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad * grad
            self.moments[name] = (m, v)
            m_hat = m / (1 - beta1**self.step_count)
            v_hat = v / (1 - beta2**self.step_count)
            param *= 1 - lr * self.weight_decay
            param -= (lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)


def random_shift(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each image by -1, 0 or +1 pixel in each direction (zero fill): the augmentation.

    Digits are hand-centred, so a one-pixel jitter is the variation the held-out images show; it
    buys accuracy (bench/RESULTS.md §1) on an 8x8 grid where the network otherwise memorizes the
    train set.
    """
    n, _, height, width = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (height, width), axis=(2, 3))  # N,C,3,3,H,W
    rows, cols = rng.integers(0, 3, n), rng.integers(0, 3, n)
    return windows[np.arange(n), :, rows, cols]


def train(
    network: Layer,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
) -> None:
    optimizer = Adam(lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = -(-len(labels) // batch_size)
    total_steps = epochs * steps_per_epoch
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        losses = []
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            loss, dlogits = softmax_cross_entropy(
                network.forward(random_shift(images[batch], rng), train=True), labels[batch]
            )
            network.backward(dlogits)
            progress = optimizer.step_count / total_steps
            optimizer.step(network, lr_scale=0.5 * (1 + np.cos(np.pi * progress)))  # cosine decay
            losses.append(loss)
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


# --------------------------------------------------------------------------------------------------
# Writing the artifacts


def export_onnx(network: Layer, eval_accuracy: float, seed: int) -> onnx.ModelProto:
    graph = GraphBuilder()
    network.export(graph, INPUT_NAME)
    graph.nodes[-1].output[0] = OUTPUT_NAME  # the head's output is the graph output
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "digits_cnn",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, 8, 8])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 10])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="mpqc tools/train_digits.py",
        doc_string=(
            "mpqc's embedded example model: a small residual CNN classifying scikit-learn's "
            "load_digits (8x8 grayscale digits; input = pixel/16 in [0,1], NCHW; output = 10 "
            f"logits). Trained in numpy by tools/train_digits.py (seed {seed}); accuracy "
            f"{eval_accuracy:.4f} on the 300-image evaluation split shipped in "
            "mpqc/models/digits.npz."
        ),
    )
    helper.set_model_props(
        model,
        {
            "dataset": "sklearn.datasets.load_digits",
            "preprocessing": "float32(pixel / 16), shape [N, 1, 8, 8]",
            "training_script": "tools/train_digits.py",
            "seed": str(seed),
            "eval_accuracy": f"{eval_accuracy:.4f}",
            "eval_split": f"{DATA_FILE}: eval_image, eval_label",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so the file is reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w") as stream:
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)


def onnxruntime_logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(str(files("mpqc") / "models")),
        help="where to write digits_cnn.onnx and digits.npz (default: mpqc's package data)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the splits, init and shuffling"
    )
    parser.add_argument("--epochs", type=int, default=40, help="training epochs")
    args = parser.parse_args(argv)

    # One BLAS thread: OpenBLAS results depend on the thread count (so the weights would too), and
    # for matrices this small threads only add overhead -- 8x slower on a busy two-core machine.
    from threadpoolctl import (
        threadpool_limits,
    )  # installed with scikit-learn, like load_splits needs

    started = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        splits = load_splits(args.seed)
        rng = np.random.default_rng(args.seed)
        network = build_network(rng)
        train(network, splits.train_image, splits.train_label, args.epochs, batch_size=32, rng=rng)
        train_seconds = time.perf_counter() - started
        numpy_logits = network.forward(splits.eval_image, train=False)
    eval_accuracy = accuracy(numpy_logits, splits.eval_label)
    model = export_onnx(network, eval_accuracy, args.seed)
    ort_logits = onnxruntime_logits(model, splits.eval_image)
    if accuracy(ort_logits, splits.eval_label) != eval_accuracy:
        raise RuntimeError(
            "onnxruntime and the numpy network disagree on eval accuracy: export bug"
        )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.out_dir / MODEL_FILE
    onnx.save_model(model, model_path)
    write_npz(
        args.out_dir / DATA_FILE,
        {
            "calib_image": splits.calib_image,
            "calib_label": splits.calib_label,
            "eval_image": splits.eval_image,
            "eval_label": splits.eval_label,
        },
    )

    n_params = sum(param.size for _, param, _ in network.parameters())
    train_logits = network.forward(splits.train_image, train=False)
    print(f"train accuracy   {accuracy(train_logits, splits.train_label):.4f}")
    calib_logits = network.forward(splits.calib_image, train=False)
    print(f"calib accuracy   {accuracy(calib_logits, splits.calib_label):.4f}")
    print(
        f"eval accuracy    {eval_accuracy:.4f} (numpy = onnxruntime; max |logit diff| "
        f"{np.abs(ort_logits - numpy_logits).max():.2e})"
    )
    print(f"parameters       {n_params} trained")
    print(f"training time    {train_seconds:.1f} s")
    for path in (model_path, args.out_dir / DATA_FILE):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path}  {path.stat().st_size} bytes  sha256 {digest}")


if __name__ == "__main__":
    main()
