"""Hypothesis strategies for random valid ONNX models, in the manner of NNSmith.

NNSmith grows a graph one operator at a time from a pool of values whose shapes it knows, picking
only operators whose constraints the pool can satisfy, so every graph it makes is valid by
construction. ``fuzz_models()`` does the same with the operators mpqc quantizes (Conv,
ConvTranspose, Gemm, MatMul, Gather, LSTM, GRU) among those it must leave alone (elementwise,
Reshape, Transpose, Concat, Split, Slice, Squeeze, reductions, pooling, normalization, Softmax), at
a random opset from 11 to 21 (Split, Squeeze and the reductions take their axes as attributes or
inputs as their opset says, which onnx's version converter must rewrite when mpqc raises it), with
what exporters write around them: a symbolic batch dimension, Constant-node weights, inputs the
graph never reads, If and Loop bodies that read outer values, and float16 islands (Cast to
float16, a few ops, Cast back).

Every choice is a hypothesis draw, so a failing model shrinks to a small one; weights come from a
numpy generator seeded by a draw. A ``FuzzModel`` carries the model and how to feed it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OPSETS", "FuzzModel", "fuzz_models"]

#: The ai.onnx opsets the models are declared at.
OPSETS = range(11, 22)

_FLOAT, _HALF, _INT64, _BOOL = (
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.INT64,
    TensorProto.BOOL,
)
_NUMPY = {_FLOAT: np.float32, _HALF: np.float16, _INT64: np.int64, _BOOL: np.bool_}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input: its shape at run time and how to draw values for it."""

    name: str
    elem_type: int
    shape: tuple[int, ...]
    #: Integer inputs index a table: values are drawn from range(high).
    high: int = 0


@dataclasses.dataclass(frozen=True)
class FuzzModel:
    """A random model and the inputs it takes."""

    proto: onnx.ModelProto
    inputs: tuple[InputSpec, ...]
    #: One line per operator, for the hypothesis report of a failing case.
    summary: str

    def samples(self, count: int, seed: int) -> list[dict[str, np.ndarray]]:
        """``count`` input dicts: standard normal floats, valid indices, random flags."""
        rng = np.random.default_rng(seed)
        samples = []
        for _ in range(count):
            sample = {}
            for spec in self.inputs:
                if spec.elem_type == _INT64:
                    sample[spec.name] = rng.integers(0, spec.high, spec.shape, dtype=np.int64)
                elif spec.elem_type == _BOOL:
                    sample[spec.name] = rng.random(spec.shape) < 0.5
                else:
                    values = rng.standard_normal(spec.shape)
                    sample[spec.name] = values.astype(_NUMPY[spec.elem_type])
            samples.append(sample)
        return samples

    def text(self) -> str:
        """The model in ONNX text (initializers included), to paste into a regression test."""
        return onnx.printer.to_text(self.proto)


@dataclasses.dataclass(frozen=True)
class _Value:
    """A value in the pool: its name, its shape at run time (axis 0 is the batch) and type."""

    name: str
    shape: tuple[int, ...]
    elem_type: int = _FLOAT
    #: A Loop's scan output stacks the iterations in front of the batch.
    batch_axis: int = 0

    @property
    def rank(self) -> int:
        return len(self.shape)


class _Graph:
    """The nodes, initializers and pool of values of one graph (the main graph or a body).

    A body's pool starts with the outer values it may read; what a body creates stays in its own
    pool, since the outer graph cannot see it.
    """

    def __init__(self, maker: _Maker, pool: list[_Value], chain: bool = False) -> None:
        self.maker = maker
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.pool = list(pool)
        #: A body is a chain from its last pool value (the If's value, the Loop's carried one),
        #: which other pool values may only join.
        self.chain = chain

    # --- building blocks -------------------------------------------------------------------------

    def const(self, array: np.ndarray, hint: str = "w") -> str:
        """A constant: an initializer, or (as exporters often write them) a Constant node."""
        name = self.maker.fresh(hint)
        tensor = numpy_helper.from_array(array, name)
        if self.maker.draw(st.integers(0, 3)) == 0:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.initializers.append(tensor)
        return name

    def weight(self, shape: tuple[int, ...], elem_type: int = _FLOAT) -> str:
        """He-initialised weights whose first axis is the output channels."""
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = self.maker.rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        return self.const(values.astype(_NUMPY[elem_type]))

    def small(self, shape: tuple[int, ...], elem_type: int = _FLOAT) -> str:
        return self.const((0.5 * self.maker.rng.normal(size=shape)).astype(_NUMPY[elem_type]), "k")

    def ints(self, values: list[int]) -> str:
        return self.const(np.array(values, dtype=np.int64), "shape")

    def node(
        self,
        op: str,
        inputs: list[str],
        shape: tuple[int, ...],
        elem_type: int = _FLOAT,
        pooled: bool = True,
        **attrs,
    ) -> _Value:
        """A node with one output; ``pooled`` puts it in the pool, where later ops may read it
        (not a scalar, nor a value whose axis 0 is not the batch)."""
        output = self.maker.fresh(op)
        name = self.maker.node_name(op)
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        value = _Value(output, shape, elem_type)
        if pooled:
            self.pool.append(value)
        return value

    def pick(self, accept: Callable[[_Value], bool]) -> _Value | None:
        """The value an op transforms: in a body, the chain's head; else a pool value ``accept``
        takes, recent ones likelier (chains more often than fans)."""
        if self.chain:
            head = self.pool[-1]
            return head if accept(head) else None
        return self.partner(accept)

    def partner(self, accept: Callable[[_Value], bool]) -> _Value | None:
        """A second operand: any pool value ``accept`` takes, recent ones likelier."""
        candidates = [v for v in self.pool if accept(v)]
        if not candidates:
            return None
        back = self.maker.draw(st.integers(0, len(candidates) - 1))
        return candidates[-1 - back] if self.maker.draw(st.booleans()) else candidates[-1]

    # --- one step --------------------------------------------------------------------------------

    def step(self, preserve: bool) -> _Value | None:
        """Add one operator over the pool (keeping its input's shape if ``preserve``)."""
        ops = _PRESERVING if preserve else _OPS
        op = self.maker.draw(st.sampled_from(ops))
        return op(self, preserve)


class _Maker:
    """State shared by a model's graphs: the draw, the weight generator, names, the opset, the
    batch, the graph inputs and the main graph (bodies may not add inputs or nest control flow)."""

    def __init__(
        self, draw: st.DrawFn, opset: int, rng: np.random.Generator, style: str, half_layers: bool
    ) -> None:
        self.draw = draw
        self.opset = opset
        self.rng = rng
        self.style = style
        self.half_layers = half_layers
        self.counter = itertools.count()
        self.summary: list[str] = []
        self.batch = draw(st.integers(1, 2))
        self.symbolic = draw(st.booleans())
        self.inputs: list[InputSpec] = []
        self.main = _Graph(self, [])

    def fresh(self, hint: str) -> str:
        index = next(self.counter)
        return f"/{hint}_{index}/output_0" if self.style == "torch" else f"{hint.lower()}{index}"

    def node_name(self, op: str) -> str:
        return "" if self.style == "anonymous" else f"{op}_{next(self.counter)}"

    def add_input(self, elem_type: int, shape: tuple[int, ...], high: int = 0) -> _Value:
        name = self.fresh("input")
        self.inputs.append(InputSpec(name, elem_type, (self.batch, *shape), high))
        return _Value(name, (self.batch, *shape), elem_type)

    def embedding(self, g: _Graph) -> _Value:
        """A Gather from a constant table by the ids of a new int64 graph input."""
        d = self.draw
        vocab, width, length = d(st.integers(2, 16)), d(st.integers(1, 8)), d(st.integers(1, 5))
        ids = self.add_input(_INT64, (length,), high=vocab)
        table = g.const(self.rng.normal(size=(vocab, width)).astype(np.float32), "table")
        self.summary.append(f"embedding {vocab}x{width}")
        return g.node("Gather", [table, ids.name], (self.batch, length, width))

    def graph_input(self, spec: InputSpec) -> onnx.ValueInfoProto:
        shape: list[int | str] = list(spec.shape)
        if self.symbolic:
            shape[0] = "N"
        return helper.make_tensor_value_info(spec.name, spec.elem_type, shape)


# --- operators: each takes the graph, returns the new value or None when the pool has no fit ----


def _float(rank: int | None = None) -> Callable[[_Value], bool]:
    return lambda v: (
        v.elem_type == _FLOAT and v.batch_axis == 0 and (rank is None or v.rank == rank)
    )


def _conv(g: _Graph, preserve: bool) -> _Value | None:
    x = g.pick(_float(4))
    if x is None:
        return None
    n, cin, h, w = x.shape
    d = g.maker.draw
    depthwise = d(st.integers(0, 3)) == 0
    cout = cin if preserve or depthwise else d(st.integers(1, 8))
    kernel = d(st.sampled_from([1, 3])) if min(h, w) >= 3 else 1
    stride = 1 if preserve or min(h, w) < 4 else d(st.sampled_from([1, 2]))
    pad = kernel // 2 if preserve else d(st.sampled_from([0, kernel // 2]))
    group = cin if depthwise else 1
    inputs = [x.name, g.weight((cout, cin // group, kernel, kernel))]
    if d(st.booleans()):
        inputs.append(g.small((cout,)))
    oh, ow = ((size + 2 * pad - kernel) // stride + 1 for size in (h, w))
    g.maker.summary.append(f"Conv {cin}->{cout} k{kernel} s{stride} g{group}")
    return g.node(
        "Conv",
        inputs,
        (n, cout, oh, ow),
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[pad] * 4,
        group=group,
    )


def _conv_transpose(g: _Graph, preserve: bool) -> _Value | None:
    """A ConvTranspose upsampling by its stride (a layer whose weight's channel axis is 1)."""
    if preserve:
        return None
    x = g.pick(_float(4))
    if x is None:
        return None
    n, cin, h, w = x.shape
    d = g.maker.draw
    cout, kernel, stride = d(st.integers(1, 4)), d(st.sampled_from([1, 2, 3])), d(st.integers(1, 2))
    inputs = [x.name, g.weight((cin, cout, kernel, kernel))]
    if d(st.booleans()):
        inputs.append(g.small((cout,)))
    oh, ow = ((size - 1) * stride + kernel for size in (h, w))
    g.maker.summary.append(f"ConvTranspose {cin}->{cout} k{kernel} s{stride}")
    return g.node(
        "ConvTranspose", inputs, (n, cout, oh, ow), kernel_shape=[kernel] * 2, strides=[stride] * 2
    )


def _batchnorm(g: _Graph, preserve: bool) -> _Value | None:
    x = g.pick(_float(4))
    if x is None:
        return None
    c = x.shape[1]
    variance = g.const(g.maker.rng.uniform(0.5, 2.0, c).astype(np.float32), "var")
    inputs = [x.name, g.small((c,)), g.small((c,)), g.small((c,)), variance]
    g.maker.summary.append("BatchNormalization")
    return g.node("BatchNormalization", inputs, x.shape, epsilon=1e-3)


def _pool(g: _Graph, preserve: bool) -> _Value | None:
    if preserve:
        return None
    x = g.pick(lambda v: _float(4)(v) and min(v.shape[2:]) >= 2)
    if x is None:
        return None
    op = g.maker.draw(st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool"]))
    g.maker.summary.append(op)
    n, c, h, w = x.shape
    if op == "GlobalAveragePool":
        return g.node(op, [x.name], (n, c, 1, 1))
    return g.node(op, [x.name], (n, c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2])


def _gemm(g: _Graph, preserve: bool) -> _Value | None:
    x = g.pick(_float(2))
    if x is None:
        return None
    d = g.maker.draw
    n, k = x.shape
    m = k if preserve else d(st.integers(1, 16))
    trans_b = d(st.booleans())
    inputs = [x.name, g.weight((m, k) if trans_b else (k, m))]
    if d(st.booleans()):
        inputs.append(g.small((m,) if d(st.booleans()) else (1, m)))
    alpha = d(st.sampled_from([1.0, 1.0, 0.5]))
    g.maker.summary.append(f"Gemm {k}->{m} transB={int(trans_b)} alpha={alpha}")
    return g.node("Gemm", inputs, (n, m), transB=int(trans_b), alpha=alpha)


def _matmul(g: _Graph, preserve: bool) -> _Value | None:
    """A MatMul by a constant weight, or (not a layer) of two activations."""
    d = g.maker.draw
    if d(st.integers(0, 3)) == 0 and not preserve:
        x = g.pick(_float(3))
        if x is None:
            return None
        y = g.partner(lambda v: _float(3)(v) and v.shape == x.shape)
        yt = g.node("Transpose", [y.name], (y.shape[0], y.shape[2], y.shape[1]), perm=[0, 2, 1])
        g.maker.summary.append("MatMul of activations")
        return g.node("MatMul", [x.name, yt.name], (x.shape[0], x.shape[1], x.shape[1]))
    x = g.pick(lambda v: _float()(v) and v.rank in (2, 3))
    if x is None:
        return None
    k = x.shape[-1]
    m = k if preserve else d(st.integers(1, 16))
    weight = g.weight((k, m))
    g.maker.summary.append(f"MatMul {k}->{m}")
    return g.node("MatMul", [x.name, weight], (*x.shape[:-1], m))


def _embedding(g: _Graph, preserve: bool) -> _Value | None:
    """Now and then, an embedding of new token ids (``_Maker.embedding``)."""
    if preserve or g.maker.draw(st.integers(0, 2)) != 0:
        return None
    return g.maker.embedding(g)


def _gather(g: _Graph, preserve: bool) -> _Value | None:
    """A Gather of an activation by constant indices along a non-batch axis (not a layer)."""
    if preserve:
        return None
    x = g.pick(lambda v: _float()(v) and v.rank >= 2)
    if x is None:
        return None
    d = g.maker.draw
    axis = d(st.integers(1, x.rank - 1))
    picked = d(st.lists(st.integers(0, x.shape[axis] - 1), min_size=1, max_size=4))
    g.maker.summary.append(f"Gather axis={axis}")
    return g.node(
        "Gather", [x.name, g.ints(picked)], _resized(x.shape, axis, len(picked)), axis=axis
    )


def _recurrent(g: _Graph, preserve: bool) -> _Value | None:
    """LSTM or GRU over a [N, T, F] value, seq-first in between; back to [N, T, H·dirs] or, from
    the last state, [N, H·dirs]."""
    if preserve:
        return None
    x = g.pick(_float(3))
    if x is None:
        return None
    d = g.maker.draw
    op = d(st.sampled_from(["LSTM", "GRU"]))
    gates = 4 if op == "LSTM" else 3
    n, t, f = x.shape
    hidden = d(st.integers(1, 6))
    direction = d(st.sampled_from(["forward", "reverse", "bidirectional"]))
    dirs = 2 if direction == "bidirectional" else 1
    xs = g.node("Transpose", [x.name], (t, n, f), pooled=False, perm=[1, 0, 2])
    inputs = [
        xs.name,
        g.weight((dirs, gates * hidden, f)),
        g.weight((dirs, gates * hidden, hidden)),
    ]
    if d(st.booleans()):
        inputs.append(g.small((dirs, 2 * gates * hidden)))
    outputs = [g.maker.fresh(op), g.maker.fresh(op + "_h")]
    g.nodes.append(
        helper.make_node(
            op, inputs, outputs, g.maker.node_name(op), hidden_size=hidden, direction=direction
        )
    )
    g.maker.summary.append(f"{op} {f}->{hidden} {direction}")
    if d(st.booleans()):
        y = _Value(outputs[0], (t, dirs, n, hidden))
        ys = g.node("Transpose", [y.name], (n, t, dirs, hidden), pooled=False, perm=[2, 0, 1, 3])
        return g.node("Reshape", [ys.name, g.ints([0, 0, dirs * hidden])], (n, t, dirs * hidden))
    y_h = _Value(outputs[1], (dirs, n, hidden))
    hs = g.node("Transpose", [y_h.name], (n, dirs, hidden), pooled=False, perm=[1, 0, 2])
    return g.node("Reshape", [hs.name, g.ints([0, dirs * hidden])], (n, dirs * hidden))


_UNARY = ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Abs", "Neg", "Elu", "HardSigmoid", "Softmax"]


def _unary(g: _Graph, preserve: bool) -> _Value | None:
    x = g.pick(_float())
    if x is None:
        return None
    op = g.maker.draw(st.sampled_from([*_UNARY, "Clip"]))
    g.maker.summary.append(op)
    if op == "Clip":
        low, high = g.const(np.float32(-1.5), "lo"), g.const(np.float32(2.0), "hi")
        return g.node(op, [x.name, low, high], x.shape)
    attrs = {"axis": -1} if op == "Softmax" else {}
    return g.node(op, [x.name], x.shape, **attrs)


def _binary(g: _Graph, preserve: bool) -> _Value | None:
    """Add/Sub/Mul/Max of two same-shaped values, or of a value and a broadcast constant."""
    x = g.pick(_float())
    if x is None:
        return None
    d = g.maker.draw
    partner = g.partner(lambda v: _float()(v) and v.shape == x.shape and v is not x)
    if partner is not None and d(st.booleans()):
        op = d(st.sampled_from(["Add", "Sub", "Mul", "Max", "Min"]))
        g.maker.summary.append(f"{op} of two values")
        return g.node(op, [x.name, partner.name], x.shape)
    op = d(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    form = d(st.sampled_from(["scalar", "last", "channel"]))
    if form == "scalar":
        shape: tuple[int, ...] = ()
    elif form == "channel" and x.rank == 4:
        shape = (x.shape[1], 1, 1)
    else:
        shape = (x.shape[-1],)
    if op == "Div":  # away from zero
        values = g.maker.rng.uniform(0.5, 2.0, shape) * g.maker.rng.choice([-1, 1], shape)
        constant = g.const(np.asarray(values, dtype=np.float32), "k")
    else:
        constant = g.small(shape)
    g.maker.summary.append(f"{op} by a {form} constant")
    return g.node(op, [x.name, constant], x.shape)


def _layernorm(g: _Graph, preserve: bool) -> _Value | None:
    x = g.pick(lambda v: _float()(v) and v.rank >= 2)
    if x is None or g.maker.opset < 17:
        return None
    f = x.shape[-1]
    scale = g.const((1 + 0.1 * g.maker.rng.normal(size=f)).astype(np.float32), "gamma")
    g.maker.summary.append("LayerNormalization")
    return g.node("LayerNormalization", [x.name, scale, g.small((f,))], x.shape, axis=-1)


def _reshape(g: _Graph, preserve: bool) -> _Value | None:
    """Between [N, C, H, W], [N, T, F] and [N, F], the batch copied (0) so it may stay symbolic."""
    if preserve:
        return None
    x = g.pick(_float())
    if x is None:
        return None
    d = g.maker.draw
    n, rest = x.shape[0], x.shape[1:]
    size = int(np.prod(rest))
    factors = [a for a in range(2, size) if size % a == 0]
    targets: list[tuple[int, ...]] = [(size,)]
    if factors:
        a = d(st.sampled_from(factors))
        targets.append((a, size // a))
        inner = [b for b in range(1, size // a + 1) if (size // a) % b == 0]
        b = d(st.sampled_from(inner))
        targets.append((a, b, size // a // b))
    target = d(st.sampled_from(targets))
    g.maker.summary.append(f"Reshape {x.shape[1:]} -> {target}")
    if len(target) == 1 and x.rank == 4 and d(st.booleans()):
        return g.node("Flatten", [x.name], (n, size), axis=1)
    return g.node("Reshape", [x.name, g.ints([0, *target])], (n, *target))


def _axes(g: _Graph, name: str, values: list[int], since: int) -> tuple[list[str], dict]:
    """``values`` as the op's ``name`` input from opset ``since``, as its attribute before: the
    signatures onnx's version converter must rewrite when mpqc raises the opset."""
    if g.maker.opset >= since:
        return [g.ints(values)], {}
    return [], {name: values}


def _resized(shape: tuple[int, ...], axis: int, size: int) -> tuple[int, ...]:
    return (*shape[:axis], size, *shape[axis + 1 :])


def _cut_axis(g: _Graph, preserve: bool) -> tuple[_Value, int] | None:
    """A float value with a non-batch axis of two or more, and that axis: where Split and Slice
    cut (never where the chain must keep its shape)."""
    if preserve:
        return None
    x = g.pick(lambda v: _float()(v) and v.rank >= 2 and max(v.shape[1:]) >= 2)
    if x is None:
        return None
    return x, g.maker.draw(st.sampled_from([a for a in range(1, x.rank) if x.shape[a] >= 2]))


def _split(g: _Graph, preserve: bool) -> _Value | None:
    """Split along a non-batch axis into two parts, both in the pool."""
    cut = _cut_axis(g, preserve)
    if cut is None:
        return None
    x, axis = cut
    d = g.maker.draw
    first = d(st.integers(1, x.shape[axis] - 1))
    parts = [first, x.shape[axis] - first]
    extra, attrs = _axes(g, "split", parts, since=13)
    outputs = [g.maker.fresh("Split") for _ in parts]
    g.nodes.append(
        helper.make_node(
            "Split", [x.name, *extra], outputs, g.maker.node_name("Split"), axis=axis, **attrs
        )
    )
    g.maker.summary.append(f"Split axis={axis} {parts}")
    values = [
        _Value(output, _resized(x.shape, axis, size))
        for output, size in zip(outputs, parts, strict=True)
    ]
    g.pool += values
    return values[d(st.integers(0, 1))]


def _slice(g: _Graph, preserve: bool) -> _Value | None:
    cut = _cut_axis(g, preserve)
    if cut is None:
        return None
    x, axis = cut
    d = g.maker.draw
    start = d(st.integers(0, x.shape[axis] - 2))
    end = d(st.integers(start + 1, x.shape[axis]))
    g.maker.summary.append(f"Slice axis={axis} {start}:{end}")
    inputs = [x.name, g.ints([start]), g.ints([end]), g.ints([axis])]
    return g.node("Slice", inputs, _resized(x.shape, axis, end - start))


def _unsqueeze(g: _Graph, preserve: bool) -> _Value | None:
    """Unsqueeze a new axis of 1 after the batch, or Squeeze such an axis away."""
    if preserve:
        return None
    d = g.maker.draw

    def ones(v: _Value) -> list[int]:
        return [a for a in range(1, v.rank) if v.shape[a] == 1]

    x = g.pick(lambda v: _float()(v) and (v.rank < 4 or bool(ones(v))))
    if x is None:
        return None
    if x.rank < 4 and (not ones(x) or d(st.booleans())):
        axis = d(st.integers(1, x.rank))
        extra, attrs = _axes(g, "axes", [axis], since=13)
        g.maker.summary.append(f"Unsqueeze axis={axis}")
        shape = (*x.shape[:axis], 1, *x.shape[axis:])
        return g.node("Unsqueeze", [x.name, *extra], shape, **attrs)
    axis = d(st.sampled_from(ones(x)))
    extra, attrs = _axes(g, "axes", [axis], since=13)
    g.maker.summary.append(f"Squeeze axis={axis}")
    shape = tuple(size for a, size in enumerate(x.shape) if a != axis)
    return g.node("Squeeze", [x.name, *extra], shape, **attrs)


def _reduce(g: _Graph, preserve: bool) -> _Value | None:
    """ReduceMean or ReduceMax over the last axis, kept as 1."""
    x = g.pick(lambda v: _float()(v) and v.rank >= 2)
    if x is None or (preserve and x.shape[-1] != 1):
        return None
    op = g.maker.draw(st.sampled_from(["ReduceMean", "ReduceMax"]))
    extra, attrs = _axes(g, "axes", [-1], since=18)
    g.maker.summary.append(op)
    return g.node(op, [x.name, *extra], (*x.shape[:-1], 1), keepdims=1, **attrs)


def _transpose(g: _Graph, preserve: bool) -> _Value | None:
    x = g.pick(lambda v: _float()(v) and v.rank >= 3)
    if x is None:
        return None
    perms = [p for p in itertools.permutations(range(1, x.rank))]
    if preserve:
        perms = [p for p in perms if all(x.shape[1 + i] == x.shape[a] for i, a in enumerate(p))]
    perm = (0, *g.maker.draw(st.sampled_from(perms)))
    g.maker.summary.append(f"Transpose {perm}")
    return g.node("Transpose", [x.name], tuple(x.shape[a] for a in perm), perm=list(perm))


def _concat(g: _Graph, preserve: bool) -> _Value | None:
    """Two values that agree on every axis but one (the batch always agrees)."""
    if preserve:
        return None
    x = g.pick(lambda v: _float()(v) and v.rank >= 2)
    if x is None:
        return None

    def fits(v: _Value) -> bool:
        differ = [i for i in range(v.rank) if v.rank == x.rank and v.shape[i] != x.shape[i]]
        return _float(x.rank)(v) and v.shape[0] == x.shape[0] and len(differ) <= 1

    y = g.partner(fits)
    differ = [i for i in range(1, x.rank) if x.shape[i] != y.shape[i]]
    axis = differ[0] if differ else g.maker.draw(st.integers(1, x.rank - 1))
    shape = list(x.shape)
    shape[axis] += y.shape[axis]
    g.maker.summary.append(f"Concat axis={axis}")
    return g.node("Concat", [x.name, y.name], tuple(shape), axis=axis)


def _half_island(g: _Graph, preserve: bool) -> _Value | None:
    """Cast to float16, one to three ops there (a MatMul by a float16 weight among them, if the
    maker's ``half_layers``), back."""
    x = g.pick(_float())
    if x is None:
        return None
    d = g.maker.draw
    half = g.node("Cast", [x.name], x.shape, _HALF, to=_HALF)
    for _ in range(d(st.integers(1, 3))):
        op = d(
            st.sampled_from(["Relu", "Sigmoid", "Add", "Mul", *["MatMul"] * g.maker.half_layers])
        )
        if op in ("Add", "Mul"):
            half = g.node(op, [half.name, g.small((half.shape[-1],), _HALF)], half.shape, _HALF)
        elif op == "MatMul" and half.rank in (2, 3):
            k = half.shape[-1]
            m = k if preserve else d(st.integers(1, 8))
            shape = (*half.shape[:-1], m)
            half = g.node(op, [half.name, g.weight((k, m), _HALF)], shape, _HALF)
        elif op != "MatMul":
            half = g.node(op, [half.name], half.shape, _HALF)
    g.maker.summary.append("float16 island")
    return g.node("Cast", [half.name], half.shape, _FLOAT, to=_FLOAT)


def _if(g: _Graph, preserve: bool) -> _Value | None:
    """Two branches over outer values, the condition computed from the data (so the calibration
    samples take both branches)."""
    if g is not g.maker.main or preserve:
        return None
    x = g.pick(_float())
    if x is None:
        return None
    mean = g.node("ReduceMean", [x.name], (), pooled=False, keepdims=0)
    zero = g.const(np.float32(0.0), "zero")
    cond = g.node("Greater", [mean.name, zero], (), _BOOL, pooled=False)
    branches = [_body(g, x) for _ in range(2)]
    output = g.maker.fresh("If")
    g.nodes.append(
        helper.make_node(
            "If",
            [cond.name],
            [output],
            g.maker.node_name("If"),
            then_branch=branches[0],
            else_branch=branches[1],
        )
    )
    g.maker.summary.append("If")
    value = _Value(output, x.shape)
    g.pool.append(value)
    return value


def _loop(g: _Graph, preserve: bool) -> _Value | None:
    """A fixed trip count over a loop-carried value that the body transforms in place (optionally
    with its per-iteration values as a scan output)."""
    if g is not g.maker.main or preserve:
        return None
    x = g.pick(_float())
    if x is None:
        return None
    d = g.maker.draw
    trips = d(st.integers(1, 3))
    scan = d(st.booleans())
    maker = g.maker
    iteration, cond_in, carried = (maker.fresh(h) for h in ("iter", "cond_in", "carried"))
    body = _Graph(maker, [v for v in g.pool if _float()(v)], chain=True)
    body.pool.append(_Value(carried, x.shape))
    result = body.pool[-1]
    for _ in range(d(st.integers(1, 3))):
        result = body.step(preserve=True) or result
    if result.name == carried:
        result = body.node("Identity", [carried], x.shape)
    cond_out = maker.fresh("cond_out")
    body.nodes.append(helper.make_node("Identity", [cond_in], [cond_out]))
    body_outputs = [helper.make_tensor_value_info(cond_out, _BOOL, []), _info(result, None)]
    if scan:
        scanned = body.node("Identity", [result.name], x.shape)
        body_outputs.append(_info(scanned, None))
    graph = helper.make_graph(
        body.nodes,
        maker.fresh("loop_body"),
        [
            helper.make_tensor_value_info(iteration, _INT64, []),
            helper.make_tensor_value_info(cond_in, _BOOL, []),
            helper.make_tensor_value_info(carried, _FLOAT, None),
        ],
        body_outputs,
        body.initializers,
    )
    count = g.const(np.array(trips, dtype=np.int64), "trips")
    keep_going = g.const(np.array(True), "keep_going")
    outputs = [maker.fresh("Loop")] + ([maker.fresh("Loop_scan")] if scan else [])
    g.nodes.append(
        helper.make_node(
            "Loop", [count, keep_going, x.name], outputs, maker.node_name("Loop"), body=graph
        )
    )
    maker.summary.append(f"Loop x{trips}" + (" with a scan output" if scan else ""))
    value = _Value(outputs[0], x.shape)
    g.pool.append(value)
    if scan:
        g.pool.append(_Value(outputs[1], (trips, *x.shape), batch_axis=1))
    return value


def _body(g: _Graph, x: _Value) -> onnx.GraphProto:
    """An If branch: a few shape-keeping ops from ``x`` (and other outer values), no inputs."""
    maker = g.maker
    body = _Graph(maker, [v for v in g.pool if _float()(v) and v is not x] + [x], chain=True)
    result = x
    for _ in range(maker.draw(st.integers(1, 3))):
        result = body.step(preserve=True) or result
    if result is x:  # a branch may not return an outer value as it is
        result = body.node("Identity", [x.name], x.shape)
    return helper.make_graph(
        body.nodes, maker.fresh("branch"), [], [_info(result, None)], body.initializers
    )


def _read_names(nodes: list[onnx.NodeProto]) -> set[str]:
    """The names ``nodes`` read, their bodies' reads included."""
    read: set[str] = set()
    for node in nodes:
        read.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                read |= _read_names(list(attribute.g.node))
    return read


def _info(value: _Value, batch: str | None) -> onnx.ValueInfoProto:
    """The value's type; its shape too unless ``batch`` is None, with the batch axis named
    ``batch`` ("" keeps it static)."""
    if batch is None:
        return helper.make_tensor_value_info(value.name, value.elem_type, None)
    shape = [batch or s if i == value.batch_axis else s for i, s in enumerate(value.shape)]
    return helper.make_tensor_value_info(value.name, value.elem_type, shape)


_OPS = [
    _conv,
    _conv,
    _conv_transpose,
    _batchnorm,
    _pool,
    _gemm,
    _gemm,
    _matmul,
    _matmul,
    _embedding,
    _gather,
    _recurrent,
    _recurrent,
    _unary,
    _unary,
    _binary,
    _binary,
    _layernorm,
    _reshape,
    _reshape,
    _transpose,
    _concat,
    _split,
    _slice,
    _unsqueeze,
    _reduce,
    _half_island,
    _if,
    _loop,
]
_PRESERVING = [_conv, _batchnorm, _gemm, _matmul, _unary, _binary, _layernorm, _transpose, _reduce]


# --- whole models --------------------------------------------------------------------------------


@st.composite
def fuzz_models(draw: st.DrawFn, max_ops: int = 10, half_layers: bool = True) -> FuzzModel:
    """A random valid model: one or two float inputs (and maybe token ids and unused inputs), up
    to ``max_ops`` operators, up to four outputs; float16 islands hold layers if
    ``half_layers``."""
    opset = draw(st.sampled_from(OPSETS))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    style = draw(st.sampled_from(["plain", "torch", "anonymous"]))
    maker = _Maker(draw, opset, rng, style, half_layers)
    main = maker.main
    # ranges of each axis after the batch
    kinds = {"image": ((1, 4), (3, 8), (3, 8)), "sequence": ((1, 4), (2, 8)), "vector": ((2, 16),)}
    for kind in draw(st.lists(st.sampled_from(sorted(kinds)), min_size=1, max_size=2)):
        shape = tuple(draw(st.integers(low, high)) for low, high in kinds[kind])
        main.pool.append(maker.add_input(_FLOAT, shape))
    if draw(st.integers(0, 3)) == 0:
        main.pool.append(maker.embedding(main))
    produced: list[_Value] = []
    for _ in range(draw(st.integers(1, max_ops))):
        value = main.step(preserve=False)
        if value is not None:
            produced.append(value)
    if not produced:
        produced.append(main.node("Relu", [main.pool[0].name], main.pool[0].shape))
    for _ in range(draw(st.integers(0, 2))):  # inputs the graph never reads
        elem_type = draw(st.sampled_from([_FLOAT, _INT64, _BOOL]))
        maker.add_input(elem_type, (draw(st.integers(1, 4)),), high=3)
    # NNSmith's outputs: the values nothing reads (the last one always), the four latest
    read = _read_names(main.nodes)
    leaves = [v for v in main.pool if v in produced or v.batch_axis]
    leaves = [v for v in leaves if v.name not in read or v is leaves[-1]]
    outputs = {v.name: v for v in leaves[-4:]}
    graph = helper.make_graph(
        main.nodes,
        "fuzz",
        [maker.graph_input(spec) for spec in maker.inputs],
        [_info(v, "N" if maker.symbolic else "") for v in outputs.values()],
        main.initializers,
    )
    ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=max(ir_version, 7)
    )
    return FuzzModel(proto, tuple(maker.inputs), "\n".join(maker.summary))
