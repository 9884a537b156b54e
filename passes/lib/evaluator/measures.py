"""How far a configuration's outputs are from the float model's: the evaluator's measures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

__all__ = ["Measure", "Outputs", "output_error"]

Outputs = list[np.ndarray]
#: A named output distance, or any ``(reference, outputs) -> damage`` over per-sample outputs (a
#: task metric's drop, say; it must pickle to run in worker processes).
Measure = Literal["kl", "mse", "flips"] | Callable[[list[Outputs], list[Outputs]], float]


def output_error(reference: list[Outputs], outputs: list[Outputs], measure: Measure) -> float:
    """Distance of ``outputs`` from ``reference`` (both per sample, per output).

    - ``mse``: each float output's squared error relative to its energy (1/SQNR), scale-free,
      averaged over the float outputs (``_relative_squared_error``);
    - ``kl``: mean KL(p_ref || p) of the first output's last axis, after a softmax unless the output
      already holds probabilities (rows non-negative and summing to 1);
    - ``flips``: fraction of the first output's rows whose arg-max changed (top-1 disagreement);
    - a callable: whatever it returns for ``(reference, outputs)``.
    """
    if callable(measure):
        return float(measure(reference, outputs))
    if measure == "mse":
        return _relative_squared_error(reference, outputs)
    ref = np.concatenate([_rows(rs[0]) for rs in reference])
    out = np.concatenate([_rows(os_[0]) for os_ in outputs])
    if measure == "flips":
        return float(np.mean(ref.argmax(-1) != out.argmax(-1)))
    if measure == "kl":
        p, q = _probabilities(ref), _probabilities(out)
        return float(
            np.mean(
                np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=-1)
            )
        )
    raise ValueError(f"unknown measure {measure!r}: use kl, mse or flips")


def _relative_squared_error(reference: list[Outputs], outputs: list[Outputs]) -> float:
    """The mean over the float outputs of each one's squared error relative to its energy.

    Per output, so that a small output counts as much as a big one: a sentence embedder's pooled
    embedding ([N, 384]) next to its token embeddings ([N, tokens, 384]) would otherwise weigh a
    few percent of the sum, and a bias that pooling keeps would hide under rounding noise that
    pooling averages away. Integer outputs (token ids passed through, argmax indices) are no
    signal to compare in squares and are left out."""
    errors = []
    for index, first in enumerate(reference[0]):
        if not np.issubdtype(np.asarray(first).dtype, np.floating):
            continue
        signal = sum(float(np.sum(np.square(rs[index], dtype=np.float64))) for rs in reference)
        noise = sum(
            float(np.sum(np.square(np.asarray(os_[index], np.float64) - rs[index])))
            for rs, os_ in zip(reference, outputs, strict=True)
        )
        errors.append(noise / signal if signal > 0 else noise)
    return float(np.mean(errors)) if errors else 0.0


def _rows(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, np.float64)
    return array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)


def _probabilities(rows: np.ndarray) -> np.ndarray:
    if np.all(rows >= 0) and np.allclose(rows.sum(-1), 1.0, atol=1e-4):
        return rows
    shifted = rows - rows.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)
