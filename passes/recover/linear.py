"""A quantizable layer seen as grouped matrix products ``y_g = W_g x_g``: what recovery works on.

Conv (grouped and depthwise included), Gemm and MatMul with a constant 2-D weight all compute, per
output position, a product of a weight matrix with a column of inputs: for a Conv that column is the
receptive field (im2col), one per group. ``LinearView`` holds the two translations recovery needs:

- ``matrix(weight)`` / ``weight_from(matrix)``: the weight as ``(groups, rows, cols)`` — rows are
  output channels, the per-channel quantization axis — and back to the ONNX layout;
- ``rows(x, limit)``: a batch of the layer's input as ``(positions, groups, cols)``, the samples the
  Hessian ``Σ x xᵀ`` and the input mean are taken over. Padding zeros are real inputs of a Conv
  and stay in. At most about ``limit`` positions per sample are kept, evenly strided over the
  image (or the tokens): an early Conv of a text recognizer sees 8k receptive fields per line, and
  building them all costs more than the rest of recovery while adding nothing a 27x27 Hessian needs.

Gather (embeddings), LSTM/GRU and ConvTranspose are not such products (or not one recovery can
write back in one layout); ``linear_view`` returns the reason instead of a view.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mpqc.ir.layers import Layer

__all__ = ["LinearView", "linear_view"]


@dataclasses.dataclass(frozen=True)
class _ConvGeometry:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # ONNX order: all begins, then all ends
    auto_pad: str

    def padding(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        """(begin, end) per spatial axis, resolving SAME_UPPER / SAME_LOWER / VALID for this input
        size."""
        rank = len(self.kernel)
        if self.auto_pad in ("", "NOTSET"):
            return [(self.pads[i], self.pads[i + rank]) for i in range(rank)]
        if self.auto_pad == "VALID":
            return [(0, 0)] * rank
        pads = []
        for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if self.auto_pad == "SAME_UPPER" else (large, small))
        return pads


@dataclasses.dataclass(frozen=True)
class LinearView:
    """How one layer's weight and input map onto ``(groups, rows, cols)`` products (module
    docstring)."""

    layer: Layer
    shape: tuple[int, ...]
    groups: int
    #: Gemm: the input arrives transposed (transA) / the weight is stored [K, N] (transB = 0).
    transpose_input: bool = False
    transpose_weight: bool = False
    conv: _ConvGeometry | None = None

    @property
    def out_channels(self) -> int:
        return self.shape[self.layer.channel_axis]

    @property
    def cols(self) -> int:
        """Inputs per output channel (per group for a grouped Conv): the Hessian's size."""
        return math.prod(self.shape) // self.out_channels

    def matrix(self, weight: np.ndarray) -> np.ndarray:
        """``weight`` (ONNX layout) as ``(groups, rows, cols)``."""
        if self.conv is not None:
            return weight.reshape(self.groups, self.out_channels // self.groups, -1)
        matrix = weight.T if self.transpose_weight else weight
        return matrix[None]

    def weight_from(self, matrix: np.ndarray) -> np.ndarray:
        """The inverse of ``matrix``: back to the ONNX layout."""
        if self.conv is not None:
            return matrix.reshape(self.shape)
        return matrix[0].T if self.transpose_weight else matrix[0]

    def rows(self, x: np.ndarray, limit: int) -> np.ndarray:
        """The layer input ``x`` (one batch, ONNX layout) as ``(positions, groups, cols)``: at most
        ``limit`` rows of a MatMul/Gemm input, at most ``limit`` receptive fields per image of a
        Conv's."""
        if self.conv is None:
            x = x.T if self.transpose_input else x
            rows = x.reshape(-1, 1, x.shape[-1])
            return rows[:: -(-rows.shape[0] // limit)]
        return _im2col(x, self.conv, self.groups, limit)


def _subsampling(sizes: tuple[int, ...], limit: int) -> int:
    """The smallest common step along every axis that leaves at most ``limit`` of the grid's
    points."""
    step = 1
    while math.prod(-(-n // step) for n in sizes) > limit:
        step += 1
    return step


def _im2col(x: np.ndarray, geometry: _ConvGeometry, groups: int, limit: int) -> np.ndarray:
    """Receptive fields of ``x`` [N, C, *spatial], column order (channel, kernel...) as Conv
    weights flatten."""
    rank = len(geometry.kernel)
    padding = geometry.padding(tuple(x.shape[2:]))
    x = np.pad(x, [(0, 0), (0, 0), *padding])
    extents = tuple(
        (k - 1) * d + 1 for k, d in zip(geometry.kernel, geometry.dilations, strict=True)
    )
    spatial_axes = tuple(range(2, 2 + rank))
    windows = sliding_window_view(x, extents, axis=spatial_axes)  # [N, C, *positions, *extents]
    out = tuple(
        -(-(n - e + 1) // s) for n, e, s in zip(x.shape[2:], extents, geometry.strides, strict=True)
    )
    step = _subsampling(out, limit)
    select = (
        slice(None),
        slice(None),
        *(slice(None, None, s * step) for s in geometry.strides),
        *(slice(None, None, d) for d in geometry.dilations),
    )
    windows = windows[select]  # [N, C, *out, *kernel]
    n, channels = windows.shape[:2]
    out = windows.shape[2 : 2 + rank]
    order = (0, *range(2, 2 + rank), 1, *range(2 + rank, 2 + 2 * rank))  # [N, *out, C, *kernel]
    columns = windows.transpose(order).reshape(
        n * math.prod(out), groups, channels // groups * math.prod(geometry.kernel)
    )
    return columns


def linear_view(layer: Layer) -> LinearView | str:
    """The layer as grouped matrix products, or why it is not one recovery handles."""
    node = layer.node
    weight = layer.weight_array()
    shape = tuple(weight.shape)
    op = node.op_type
    if weight.dtype != np.float32:
        return f"its weight is {weight.dtype}, recovery writes float32 weights only"
    if op == "Conv":
        rank = weight.ndim - 2
        attributes = node.attributes
        groups = attributes.get_int("group", 1)
        geometry = _ConvGeometry(
            kernel=shape[2:],
            strides=tuple(attributes.get_ints("strides", [1] * rank)),
            dilations=tuple(attributes.get_ints("dilations", [1] * rank)),
            pads=tuple(attributes.get_ints("pads", [0] * 2 * rank)),
            auto_pad=attributes.get_string("auto_pad", "NOTSET"),
        )
        return LinearView(layer, shape, groups, conv=geometry)
    if op == "Gemm":
        return LinearView(
            layer,
            shape,
            1,
            transpose_input=bool(node.attributes.get_int("transA", 0)),
            transpose_weight=not node.attributes.get_int("transB", 0),
        )
    if op == "MatMul":
        if weight.ndim != 2:
            return f"its MatMul weight has rank {weight.ndim}; only 2-D weights are reconstructed"
        return LinearView(layer, shape, 1, transpose_weight=True)
    return f"{op} is not a matrix product recovery reconstructs (Conv, Gemm and MatMul are)"
