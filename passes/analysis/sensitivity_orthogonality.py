"""``sensitivity-orthogonality``: OMPQ — layers whose features nobody else carries deserve more
bits.

OMPQ (Ma et al., AAAI 2023; METHODS.md §3) runs the float model on one small batch (N = 32 samples)
and compares the layers' output features with a linear-kernel CKA, the *orthogonality metric*:

    K_i = X_i X_i^T (N x N),  K~_i = H K_i H (centred),
    ORM(i, j) = <K~_i, K~_j>_F / (||K~_i||_F ||K~_j||_F)

Then ``gamma_i = sum_{j != i} ORM(i, j)``, ``theta_i = exp(-beta * gamma_i)`` — a layer nearly
orthogonal to the rest carries unique information — and ``w_i = mean_{j >= i} theta_j``, because a
layer's bits also shape every later layer. The LP of the paper maximizes ``sum_i w_i b_i``, so the
damage of giving layer ``i`` only ``b`` bits is ``w_i * (b_max - b) / b_max`` — what this pass
writes as ``w{b}``. ``gamma``, ``theta`` and ``w`` go to ``mpqc.sensinfo.orthogonality``.

Numerics: theta is computed as ``exp(-beta * (gamma_i - min gamma))``, which multiplies every
theta — and so every w — by the same constant: rankings and LP solutions are the paper's, and a
large beta (the paper uses 100 on ResNet-18) cannot underflow every weight to zero. Features are the
layers' outputs fetched as extra graph outputs in one onnxruntime session (N x d floats per layer,
reduced to the N x N Gram matrix once all samples have run). A sample whose outputs share the
leading (batch) dimension of the model's first input contributes one row per batch item, otherwise
one row; axes whose size follows the input (sequence length, line width) are averaged out first, so
variable-length samples compare too.

Note on the estimator: linear CKA of *independent* random features tends to 0 only when N is large
against the feature dimension d; for d >> N it tends to 1 (every centred Gram matrix is close to
``d * H``). With N = 32 and wide layers ORM values crowd towards 1 and beta decides how much their
differences count.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

from mpqc.ir.layers import Layer
from mpqc.passes.analysis.sensitivity_base import SensitivityPass, WeightCandidates
from mpqc.passes.infra.base import PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.bodies import expose
from mpqc.passes.lib.runtime import external_folder, model_session

__all__ = [
    "SensitivityOrthogonalityPass",
    "centred_gram",
    "orthogonality_matrix",
    "layer_importance",
]


def centred_gram(features: np.ndarray) -> np.ndarray:
    """``H X X^T H`` for features ``X`` of shape (N, d), in float64."""
    x = features.reshape(features.shape[0], -1).astype(np.float64)
    gram = x @ x.T
    mean_row = gram.mean(axis=0, keepdims=True)
    return gram - mean_row - mean_row.T + gram.mean()


def orthogonality_matrix(grams: list[np.ndarray]) -> np.ndarray:
    """ORM(i, j) from centred Gram matrices: symmetric, 1 on the diagonal, in [0, 1].

    A layer with constant features (zero centred Gram) is orthogonal to everything: ORM 0 off the
    diagonal.
    """
    flat = np.stack([g.reshape(-1) for g in grams])
    inner = flat @ flat.T
    norms = np.sqrt(np.diag(inner))
    safe = np.where(norms > 0, norms, 1.0)
    orm = inner / np.outer(safe, safe)
    orm = np.clip((orm + orm.T) / 2, 0.0, 1.0)
    np.fill_diagonal(orm, 1.0)
    return orm


def layer_importance(orm: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gamma, theta, w) of OMPQ for layers in topological order (theta rescaled, see module
    docstring)."""
    gamma = orm.sum(axis=1) - np.diag(orm)
    theta = np.exp(-beta * (gamma - gamma.min()))
    suffix = np.cumsum(theta[::-1])[::-1]
    w = suffix / np.arange(len(theta), 0, -1)
    return gamma, theta, w


@register
class SensitivityOrthogonalityPass(SensitivityPass):
    name = "sensitivity-orthogonality"
    metric = "orthogonality"

    @dataclasses.dataclass(frozen=True)
    class Options(WeightCandidates):
        beta: float = option(
            1.0,
            "sharpness of theta = exp(-beta * gamma); "
            "OMPQ used 100 (ResNet-18) down to 1e-9 (MobileNet-V2)",
        )
        samples: int = option(32, "calibration samples whose features are compared (OMPQ: 32)")

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.beta < 0:
                raise ValueError(f"beta must be non-negative, got {self.beta}")
            if self.samples < 2:
                raise ValueError(f"samples must be at least 2, got {self.samples}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = self.layers(model)
        data = self.calibration(model, "to compare the layers' features")
        wbits = self.weight_bits()
        features = _features(model, layers, list(data)[: self.options.samples])
        if features[0].shape[0] < 2:
            raise PassInputError(
                f"{self.name}: needs at least 2 feature rows, got {features[0].shape[0]}; "
                "give more calibration samples"
            )
        orm = orthogonality_matrix([centred_gram(f) for f in features])
        gamma, theta, w = layer_importance(orm, self.options.beta)
        top = wbits[-1]
        for i, layer in enumerate(layers):
            scores = {f"w{b}": float(w[i]) * (top - b) / top for b in wbits}
            self.write(
                layer,
                scores,
                {
                    "gamma": float(gamma[i]),
                    "theta": float(theta[i]),
                    "w": float(w[i]),
                    "rows": int(features[i].shape[0]),
                },
            )
        return ir.passes.PassResult(model, modified=True)


def _features(model: ir.Model, layers: list[Layer], samples: list) -> list[np.ndarray]:
    """Per layer, its output's stacked feature rows (N, d) over ``samples``.

    Where a tensor's size along some axis follows the input (a sentence's length, a text line's
    width), samples cannot be stacked as they are: those axes are averaged out (global average
    pooling over the sequence or space), leaving one fixed-size feature per sample. A layer inside a
    body is read through ``bodies.expose``: every step of a Scan stacked, every trip of a Loop
    flattened into one row; one in an If branch must run on every sample (a refusal names it
    otherwise).
    """
    inner = {
        layer.node.outputs[0].name: layer.node.outputs[0].dtype.value
        for layer in layers
        if layer.in_subgraph and layer.node.outputs[0].dtype is not None
    }
    exposed = expose(ir.to_proto(model), inner)
    proto = exposed.proto
    carrying = {value: out for out, (value, _) in exposed.outputs.items()}
    names = [
        carrying.get(layer.node.outputs[0].name, layer.node.outputs[0].name) for layer in layers
    ]
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(
        onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in present
    )
    runner = model_session(proto, external_folder(model))
    first_input = next(v.name for v in model.graph.inputs if not v.is_initializer())
    arrays: list[list[np.ndarray]] = [[] for _ in names]
    batches = []
    for sample in samples:
        batches.append(np.asarray(sample[first_input]).shape[:1])
        for i, array in enumerate(runner.run(names, dict(sample))):
            if np.size(array) == 0:
                raise PassInputError(
                    f"sensitivity-orthogonality: layer '{layers[i].name}' does not run on every "
                    "calibration sample (its branch is skipped), so its features cannot be "
                    "compared; use another sensitivity metric"
                )
            arrays[i].append(np.asarray(array, np.float32))
    rows = []
    for per_sample in arrays:
        varying = _varying_axes([a.shape for a in per_sample], batches)
        pooled = [a.mean(axis=varying, keepdims=True) if varying else a for a in per_sample]
        rows.append(
            np.concatenate([_rows(a, batch) for a, batch in zip(pooled, batches, strict=True)])
        )
    return rows


def _varying_axes(shapes: list[tuple[int, ...]], batches: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The axes whose size changes from sample to sample (a text line's width, a sequence's
    length), averaged away so that every sample gives rows of one width. The leading axis counts
    too unless it is each sample's batch, which ``_rows`` splits into rows: a time-major layer (an
    LSTM's [seq, batch, hidden], the Gemm behind it) varies there."""
    if len({len(shape) for shape in shapes}) != 1:
        return ()
    batch_led = all(shape[:1] == batch for shape, batch in zip(shapes, batches, strict=True))
    return tuple(
        axis
        for axis in range(1 if batch_led else 0, len(shapes[0]))
        if len({shape[axis] for shape in shapes}) > 1
    )


def _rows(array: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """One row per batch item when ``array`` leads with the samples' batch dimension, else one
    row."""
    split = array.ndim >= 1 and array.shape[:1] == batch and batch[0] > 1
    return array.reshape(array.shape[0], -1) if split else array.reshape(1, -1)
