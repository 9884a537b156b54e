"""Train the digits CNN that mpqc ships as its embedded default model.

Why it exists: `mpqc` must be runnable, and testable for a real accuracy number, without the user
bringing a model or a data set. scikit-learn bundles `load_digits` (1797 grayscale 8x8 digits, no
download), which is enough to train a small CNN to a real accuracy quickly on a CPU (accuracy and
training time: bench/RESULTS.md §1).

Why pure numpy: the only heavy dependency is one the project already has. The layers
(`mpqc.tools.digits_layers`) are im2col convolutions with hand-written backpropagation, each able to
emit itself as ONNX nodes; the optimizer here is Adam with a cosine learning-rate decay.

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
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper

from mpqc.tools.digits_layers import (
    BatchNorm2d,
    Conv2d,
    Flatten,
    Gemm,
    GlobalAveragePool,
    GraphBuilder,
    Layer,
    Relu,
    Residual,
    Sequential,
)

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
