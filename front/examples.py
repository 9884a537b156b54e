"""The embedded example: a small trained digits CNN and its calibration / evaluation data.

Why it exists: mpqc has to be runnable and measurable without the user bringing anything. When no
model is given, the compiler uses `digits_model_path()`; the tests use `digits_accuracy` to put a
real task-accuracy number on every quantized model. The files are package data made by
`tools/train_digits.py` (scikit-learn's `load_digits`, pixels scaled to [0, 1], NCHW [N, 1, 8, 8]):

* `models/digits_cnn.onnx` — Conv -> BatchNormalization -> ... -> residual Add -> ... -> Gemm,
  opset 17;
* `models/digits.npz` — 200 calibration and 300 evaluation images, disjoint from the training set
  and from each other, stratified by class.

`digits_accuracy` doubles as the template of a user task metric for `--eval module:function`: a
function taking a model and returning a score where higher is better.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

Split = Literal["calib", "eval"]


def _package_file(name: str) -> Path:
    """A file of mpqc/models as a real path (pip never installs mpqc zipped, so it is on disk)."""
    return Path(str(files(__package__).joinpath("models", name)))


def digits_model_path() -> Path:
    """Path of the shipped float digits CNN, for anything that wants a model file."""
    return _package_file("digits_cnn.onnx")


def digits_data(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, 1, 8, 8], labels int64 [N]) of the calibration (200) or evaluation
    (300) split."""
    if split not in ("calib", "eval"):
        raise ValueError(f"unknown digits split {split!r}: use 'calib' or 'eval'")
    with np.load(_package_file("digits.npz")) as data:
        return data[f"{split}_image"], data[f"{split}_label"]


def digits_calibration(batch_size: int = 1) -> list[dict[str, np.ndarray]]:
    """The calibration split as onnxruntime input dicts {"image": batch}, as `calibrate` takes it.

    Batches of one by default: that is how a deployed model sees data, and it keeps per-batch
    statistics (percentile, entropy histograms) comparable with any other input source.
    """
    images, _ = digits_data("calib")
    return [
        {"image": images[start : start + batch_size]} for start in range(0, len(images), batch_size)
    ]


def digits_accuracy(
    model: str | os.PathLike[str] | onnx.ModelProto, split: Split = "eval"
) -> float:
    """Top-1 accuracy of a digits model (float or quantized) on onnxruntime's CPU provider.

    The input is fed by position, not by name, so a compiled model whose input was renamed still
    scores; the whole split runs as one batch, as the model's batch dimension is symbolic.
    """
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    images, labels = digits_data(split)
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    return float((logits.argmax(axis=1) == labels).mean())
