"""The configurable evaluator: any bit configuration, one onnxruntime session, the numbers lower-qdq ships.

Sensitivity analysis and the searches ask the same question thousands of times: *what does the model
output if layer l runs at (w, a) bits and the rest at their own choices?* Lowering a model and opening
an onnxruntime session per question costs far more than running it, so the ``Evaluator`` builds one
fake-quantized graph in which the bit configuration is an *input*:

- Weights: for every layer, the weight at each candidate bit-width is fake-quantized once with
  ``grid.fake_quant_weight`` (exactly what ``DequantizeLinear`` of the stored integers gives) and the
  candidates plus the float weight are stacked into one initializer ``[K+1, ...]``; a ``Gather`` on a
  per-layer int64 index input picks one (index K = float).
- Activations: each quantizer is ``x -> (Clip(Round(x / s) + z, qmin, qmax) - z) * s`` with ``s``, ``z``,
  ``qmin``, ``qmax`` fed as scalar inputs, and ``Where(on, fq(x), x)`` as an exact bypass. In float32
  this is bit for bit what ``QuantizeLinear`` (divide, round half to even, add the zero point,
  saturate) then ``DequantizeLinear`` compute; a narrow grid's float Clip before ``QuantizeLinear``
  is the same as clipping the integer, so every bit-width, container or not, is one formula.
- The placement mirrors ``lower-qdq``: a quantizer on each layer's activation input (layers reading one
  tensor at the same bits see identical numbers, which is what sharing means); for layers that lower to
  an integer kernel (8-bit containers on both sides) a quantizer on the output, after a single
  following Relu, feeding every consumer except other layers' own input quantizers. A Conv/Gemm bias
  is a graph input too: where lower-qdq stores it as int32 at ``s_x * s_w`` (input and weight both
  dequantized), it is fed that rounding, computed in numpy exactly as lower-qdq computes it.

So ``Evaluator.run(config)`` equals what onnxruntime computes for the model ``lower-qdq`` emits with the
same ``mpqc.bits``, executed as written (the tests find identical outputs on uniform, mixed and
shared-quantizer configurations). Weight layouts follow ``lower-qdq``'s (``layout``: per-block
weights along K, and MatMulNBits, which at accuracy level 1 computes exactly the float MatMul of the
block-dequantized weight); an LSTM's/GRU's recurrence weight is stacked and selected with its W. With graph optimizations on, onnxruntime runs 8-bit layers as
integer kernels (QLinearConv...) whose requantization may round an output level differently; on a
small CNN at w8a8 that moves the logits by up to 0.4% of their range. Each run costs one session
run per sample (or per batch, see ``batch``). The float outputs are computed once and cached as the
reference. Every configuration runs the whole graph: caching the unchanged float prefix would need a
session per cut point, which for one-layer-at-a-time analysis on small calibration sets costs more
than it saves.

Parallelism: ``errors(configs)`` spreads configurations over ``executor`` (any
``concurrent.futures.Executor``). Sessions do not pickle, so the evaluator pickles as its file-backed
description (the fake-quant model and the samples are written once to a temporary folder) and each
worker process opens its own session on first use and keeps it for later tasks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mpqc.ir import annotations
from mpqc.ir.layers import Layer, constant_array, quantizable_layers
from mpqc.passes.grid import FLOAT_BITS, activation_grid, activation_qparams, fake_quant_weight, quantize_weight
from mpqc.passes.lower.layout import WeightLayout, block_axis
from mpqc.passes.lower.lower_qdq import fusable, output_target
from mpqc.passes.runtime import session
from mpqc.passes.target import weight_grid_bits

__all__ = ["FLOAT_BITS", "Config", "Evaluator", "Measure", "output_error"]

#: Layer name -> (weight bits, activation bits); 32 means float, a missing layer stays float.
Config = Mapping[str, tuple[int, int]]
Measure = Literal["kl", "mse", "flips"]
Outputs = list[np.ndarray]

_PREFIX = "mpqc.eval"


@dataclasses.dataclass(frozen=True)
class _Site:
    """One activation quantizer of the fake-quant graph: its input names and the range it quantizes."""

    prefix: str
    #: The calibrated clip range (lo, hi) of the tensor it reads, or None when it has no range.
    clip_range: tuple[float, float] | None


@dataclasses.dataclass(frozen=True)
class _LayerPlan:
    """Where one layer's choices enter the fake-quant graph."""

    name: str
    #: Position in ``quantizable_layers``: the control inputs are named after it.
    index: int
    wbits: tuple[int, ...]
    #: Per candidate weight bit-width, the per-channel scales of the stored integers (for the bias);
    #: None where the weight is blocked (its bias stays float).
    weight_scales: tuple[np.ndarray | None, ...]
    input_site: _Site | None
    output_site: _Site | None
    #: The layer whose output quantizer produces this layer's input, if any (its scale also scales the bias).
    upstream: int | None
    #: The float bias of a Conv/Gemm with a constant 1-D bias (lower-qdq may store it as int32).
    bias: np.ndarray | None


class Evaluator:
    """One session that evaluates any bit configuration of ``model`` on ``samples`` (see module docstring).

    ``wbits`` are the weight bit-widths it can select (each costs one copy of the weights in memory);
    activations take any bit-width from 2 to 16. Layers are named as ``quantizable_layers`` names them.
    ``batch`` > 1 concatenates that many consecutive samples along axis 0 into one run (for models
    whose first dimension is the batch): far less per-run overhead, and the measures, which are
    per-row means or sums, do not change.
    """

    def __init__(
        self,
        model: ir.Model,
        samples: Iterable[Mapping[str, np.ndarray]],
        *,
        wbits: Sequence[int] = (2, 3, 4, 8),
        act_signed: bool = False,
        fuse_outputs: bool = True,
        executor: concurrent.futures.Executor | None = None,
        batch: int = 1,
        spec: Any = None,
        layout: WeightLayout = WeightLayout(),
    ) -> None:
        self.samples = _batched([dict(s) for s in samples], batch)
        # The target may round some pairs' weights to a narrower grid (passes/target.py): prepare
        # those grids too, so a configuration is simulated exactly as lower-qdq lowers it. A plain
        # table (not the spec) travels to worker processes.
        self._grid_bits = {(w, a): weight_grid_bits(spec, w, a) for w in wbits for a in range(2, 17)}
        wbits = set(wbits) | set(self._grid_bits.values())
        self.act_signed = act_signed
        self.fuse_outputs = fuse_outputs
        self.executor = executor
        self.weight_only = layout.weight_only
        proto, plans = _build(model, tuple(sorted(set(wbits))), fuse_outputs, layout)
        self._plans = {plan.name: plan for plan in plans}
        self.layers = [plan.name for plan in plans]
        self.output_names = [o.name for o in proto.graph.output]
        self._model_bytes: bytes | None = proto.SerializeToString()
        self._files: tuple[str, str] | None = None  # (model path, samples path) once written for workers
        self._session: ort.InferenceSession | None = None
        self._reference: list[Outputs] | None = None

    # -- running ------------------------------------------------------------------------------

    def run(self, config: Config) -> list[Outputs]:
        """Per sample, the model's outputs (in graph order) under ``config``."""
        controls = self._controls(config)
        session = self._get_session()
        return [session.run(self.output_names, {**sample, **controls}) for sample in self.samples]

    @property
    def reference(self) -> list[Outputs]:
        """The float model's outputs per sample, computed once."""
        if self._reference is None:
            self._reference = self.run({})
        return self._reference

    def error(self, config: Config, measure: Measure = "mse") -> float:
        """How far ``config``'s outputs are from float (see ``output_error``)."""
        return output_error(self.reference, self.run(config), measure)

    def errors(self, configs: Sequence[Config], measure: Measure = "mse") -> list[float]:
        """``error`` of each configuration, in order; spread over the executor when there is one."""
        if self.executor is None or len(configs) < 2:
            return [self.error(c, measure) for c in configs]
        self._write_files()
        futures = [self.executor.submit(_worker_error, self, dict(c), measure) for c in configs]
        return [f.result() for f in futures]

    def objective(self, measure: Measure = "mse") -> Callable[[Config], float]:
        """``config -> error``: the exact evaluation a search calls."""
        return lambda config: self.error(config, measure)

    # -- the control inputs -------------------------------------------------------------------

    def _controls(self, config: Config) -> dict[str, np.ndarray]:
        unknown = sorted(set(config) - set(self._plans))
        if unknown:
            raise KeyError(f"no quantizable layer named {', '.join(map(repr, unknown))} (layers: {', '.join(self.layers)})")
        feeds: dict[str, np.ndarray] = {}
        bits = {name: tuple(int(b) for b in config.get(name, (FLOAT_BITS, FLOAT_BITS))) for name in self._plans}
        input_scale: dict[int, np.float32 | None] = {}
        output_scale: dict[int, np.float32 | None] = {}
        if self.weight_only:  # lower-qdq keeps every activation float
            bits = {name: (w, FLOAT_BITS) for name, (w, _) in bits.items()}
        for name, plan in self._plans.items():
            wbits, abits = bits[name]
            feeds[f"{_PREFIX}.{plan.index}.w"] = np.array(self._weight_choice(plan, self._grid_bits.get((wbits, abits), wbits)), np.int64)
            input_scale[plan.index] = self._site_feeds(feeds, plan.input_site, abits)
            fused = self.fuse_outputs and fusable(wbits, abits)
            output_scale[plan.index] = self._site_feeds(feeds, plan.output_site, abits if fused else FLOAT_BITS)
        for name, plan in self._plans.items():
            if plan.bias is None:
                continue
            wbits = self._grid_bits.get(bits[name], bits[name][0])
            # lower-qdq writes an int32 bias when the layer's input and weight both come out of a
            # DequantizeLinear: its own input quantizer, else the output quantizer of the layer feeding
            # it; 2-bit weights dequantize through a Mul instead, so their bias stays float.
            x_scale = input_scale[plan.index]
            if x_scale is None and plan.upstream is not None:
                x_scale = output_scale[plan.upstream]
            bias = plan.bias
            w_scale = plan.weight_scales[plan.wbits.index(wbits)] if wbits != FLOAT_BITS else None
            if x_scale is not None and wbits != 2 and w_scale is not None:
                bias = _int32_bias(plan.bias, x_scale, w_scale)
            feeds[f"{_PREFIX}.{plan.index}.bias"] = bias
        return feeds

    def _weight_choice(self, plan: _LayerPlan, wbits: int) -> int:
        if wbits == FLOAT_BITS:
            return len(plan.wbits)
        if wbits not in plan.wbits:
            raise ValueError(f"layer {plan.name!r}: weight bits {wbits} not prepared; this evaluator was built for {list(plan.wbits)}")
        return plan.wbits.index(wbits)

    def _site_feeds(self, feeds: dict[str, np.ndarray], site: _Site | None, bits: int) -> np.float32 | None:
        """Fill one quantizer's inputs; returns its scale when it is on."""
        if site is None:
            return None
        on = bits != FLOAT_BITS and site.clip_range is not None
        scale, zero_point, qmin, qmax = np.float32(1.0), 0, 0, 0
        if on:
            assert site.clip_range is not None
            grid = activation_grid(bits, self.act_signed)
            scale, zero_point = activation_qparams(*site.clip_range, grid)
            qmin, qmax = grid.qmin, grid.qmax
        feeds[f"{site.prefix}.on"] = np.array(on)
        feeds[f"{site.prefix}.scale"] = np.array(scale, np.float32)
        feeds[f"{site.prefix}.zp"] = np.array(zero_point, np.float32)
        feeds[f"{site.prefix}.qmin"] = np.array(qmin, np.float32)
        feeds[f"{site.prefix}.qmax"] = np.array(qmax, np.float32)
        return np.float32(scale) if on else None

    # -- sessions and workers -----------------------------------------------------------------

    def _get_session(self) -> ort.InferenceSession:
        if self._session is None:
            if self._model_bytes is not None:
                self._session = session(self._model_bytes)
            else:
                assert self._files is not None
                self._session = session(self._files[0])
        return self._session

    def _write_files(self) -> None:
        """Put the graph and samples on disk once, so that pickling the evaluator stays cheap."""
        if self._files is not None:
            return
        folder = tempfile.mkdtemp(prefix="mpqc-evaluator-")
        weakref.finalize(self, shutil.rmtree, folder, True)
        model_path = os.path.join(folder, "model.onnx")
        samples_path = os.path.join(folder, "samples.npz")
        assert self._model_bytes is not None
        pathlib.Path(model_path).write_bytes(self._model_bytes)
        np.savez(samples_path, **{f"{i}/{k}": v for i, s in enumerate(self.samples) for k, v in s.items()})
        self._files = (model_path, samples_path)

    def __getstate__(self) -> dict[str, Any]:
        self._write_files()
        state = dict(self.__dict__)
        state.update(_model_bytes=None, _session=None, samples=None, executor=None, _reference=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        assert self._files is not None
        with np.load(self._files[1]) as archive:
            samples: dict[int, dict[str, np.ndarray]] = {}
            for key in archive.files:
                index, name = key.split("/", 1)
                samples.setdefault(int(index), {})[name] = archive[key]
        self.samples = [samples[i] for i in sorted(samples)]


#: Per worker process: evaluators by their files, so a session is opened once per process.
_WORKER_CACHE: dict[tuple[str, str], Evaluator] = {}


def _worker_error(evaluator: Evaluator, config: dict[str, tuple[int, int]], measure: Measure) -> float:
    assert evaluator._files is not None
    cached = _WORKER_CACHE.setdefault(evaluator._files, evaluator)
    return cached.error(config, measure)


def _batched(samples: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    if batch <= 1:
        return samples
    groups = [samples[i : i + batch] for i in range(0, len(samples), batch)]
    try:
        return [{name: np.concatenate([s[name] for s in group]) for name in group[0]} for group in groups]
    except ValueError as exc:
        raise ValueError(f"cannot batch these samples along axis 0 ({exc}); use batch=1") from None


def _int32_bias(bias: np.ndarray, x_scale: np.float32, w_scale: np.ndarray) -> np.ndarray:
    """The bias as lower-qdq stores it (int32 at s_x * s_w, widened to |b| / 2^30 where that overflows), dequantized."""
    scale = np.broadcast_to(np.float32(x_scale) * w_scale.astype(np.float32).reshape(-1), bias.shape)
    scale = np.maximum(scale, np.abs(bias).astype(np.float32) / np.float32(2**30)).astype(np.float32)
    q = np.rint(bias / scale).astype(np.int32)
    return (q.astype(np.float32) * scale).astype(np.float32)


# --- Measures -----------------------------------------------------------------------------------


def output_error(reference: list[Outputs], outputs: list[Outputs], measure: Measure) -> float:
    """Distance of ``outputs`` from ``reference`` (both per sample, per output).

    - ``mse``: squared error over all outputs relative to their energy (1/SQNR), scale-free;
    - ``kl``: mean KL(p_ref || p) of the first output's last axis, after a softmax unless the output
      already holds probabilities (rows non-negative and summing to 1);
    - ``flips``: fraction of the first output's rows whose arg-max changed (top-1 disagreement).
    """
    if measure == "mse":
        signal = sum(float(np.sum(np.square(r, dtype=np.float64))) for rs in reference for r in rs)
        noise = sum(float(np.sum(np.square(np.asarray(o, np.float64) - r))) for rs, os_ in zip(reference, outputs) for r, o in zip(rs, os_))
        return noise / signal if signal > 0 else noise
    ref = np.concatenate([_rows(rs[0]) for rs in reference])
    out = np.concatenate([_rows(os_[0]) for os_ in outputs])
    if measure == "flips":
        return float(np.mean(ref.argmax(-1) != out.argmax(-1)))
    if measure == "kl":
        p, q = _probabilities(ref), _probabilities(out)
        return float(np.mean(np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=-1)))
    raise ValueError(f"unknown measure {measure!r}: use kl, mse or flips")


def _rows(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, np.float64)
    return array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)


def _probabilities(rows: np.ndarray) -> np.ndarray:
    if np.all(rows >= 0) and np.allclose(rows.sum(-1), 1.0, atol=1e-4):
        return rows
    shifted = rows - rows.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


# --- Building the fake-quant graph ---------------------------------------------------------------


def _weight_stack(layer: Layer, index: int, wbits: tuple[int, ...], block: Callable[[int], int]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """[K+1, ...]: input ``index``'s weight dequantized at each of ``wbits`` as lower-qdq stores it, then float."""
    array = constant_array(layer.node.inputs[index])
    assert array is not None
    candidates: list[np.ndarray] = []
    scales: list[np.ndarray | None] = []
    for bits in wbits:
        size = block(bits) if index == layer.weight_index else 0
        axis = block_axis(layer) if size else 0
        candidates.append(fake_quant_weight(array, bits, layer.channel_axis, size, axis or 0))
        scales.append(None if size else quantize_weight(array, bits, layer.channel_axis)[1])
    return np.stack(candidates + [array]), scales


def _build(model: ir.Model, wbits: tuple[int, ...], fuse_outputs: bool, layout: WeightLayout) -> tuple[onnx.ModelProto, list[_LayerPlan]]:
    """The fake-quant ModelProto with control inputs, and where each layer's controls are."""
    layers = quantizable_layers(model.graph)
    proto = ir.to_proto(model)
    graph = proto.graph
    producer_index = {out: i for i, node in enumerate(graph.node) for out in node.output}
    layer_node = {id(layer): producer_index[layer.node.outputs[0].name] for layer in layers}
    inserted_before: dict[int, list[onnx.NodeProto]] = {}  # original node index -> nodes to insert before it
    inserted_after: dict[int, list[onnx.NodeProto]] = {}  # -1 = before everything
    new_inputs: list[onnx.ValueInfoProto] = []
    new_initializers: list[onnx.TensorProto] = []
    renames: dict[tuple[int, int], str] = {}  # (node index, input slot) -> new input name
    plans: list[_LayerPlan] = []

    # Output quantizers first: they decide what every consumer of a layer's output sees.
    targets: dict[int, tuple[str, _Site]] = {}
    for index, layer in enumerate(layers):
        target = output_target(layer) if fuse_outputs else None
        if target is None:
            continue
        site = _Site(f"{_PREFIX}.{index}.out", _clip_range(target))
        out_name = f"{site.prefix}.y"
        nodes = _fake_quant(site.prefix, target.name, target.name, out_name)
        new_inputs += _site_inputs(site.prefix)
        producer = target.producer()
        assert producer is not None
        inserted_after.setdefault(producer_index[producer.outputs[0].name], []).extend(nodes)
        for use in target.uses():
            renames[(producer_index[use.node.outputs[0].name], use.idx)] = out_name
        targets[index] = (target.name, site)

    viewed = {name: site.prefix + ".y" for name, site in targets.values()}
    feeding = {name: index for index, (name, _) in targets.items()}
    for index, layer in enumerate(layers):
        node_index = layer_node[id(layer)]
        before = inserted_before.setdefault(node_index, [])
        choice = f"{_PREFIX}.{index}.w"
        new_inputs.append(helper.make_tensor_value_info(choice, TensorProto.INT64, []))
        scales: list[np.ndarray | None] = []
        for slot in (layer.weight_index, *layer.other_weight_indices):
            # Activation bits change the layout only through MatMulNBits, which needs float activations.
            stack, slot_scales = _weight_stack(layer, slot, wbits, lambda bits: layout.block(layer, bits, FLOAT_BITS))
            scales = scales or slot_scales
            stack_name = f"{_PREFIX}.{index}.{slot}.wstack"
            new_initializers.append(numpy_helper.from_array(stack, stack_name))
            value = f"{choice}.{slot}.value"
            before.append(helper.make_node("Gather", [stack_name, choice], [value], name=f"{choice}.{slot}.gather", axis=0))
            renames[(node_index, slot)] = value

        input_site = None
        activation = layer.activation
        if activation is not None and layer.activation_index is not None and _is_float(activation):
            input_site = _Site(f"{_PREFIX}.{index}.in", _clip_range(activation))
            fallback = viewed.get(activation.name, activation.name)
            before.extend(_fake_quant(input_site.prefix, activation.name, fallback, f"{input_site.prefix}.y"))
            new_inputs += _site_inputs(input_site.prefix)
            renames[(node_index, layer.activation_index)] = f"{input_site.prefix}.y"

        bias = None
        if layer.node.op_type in ("Conv", "Gemm") and len(layer.node.inputs) >= 3:
            bias_array = constant_array(layer.node.inputs[2])
            if bias_array is not None and bias_array.ndim == 1:
                bias = bias_array.astype(np.float32)
                bias_name = f"{_PREFIX}.{index}.bias"
                new_inputs.append(helper.make_tensor_value_info(bias_name, TensorProto.FLOAT, list(bias.shape)))
                renames[(node_index, 2)] = bias_name
        output_site = targets[index][1] if index in targets else None
        upstream = feeding.get(activation.name) if activation is not None else None
        plans.append(_LayerPlan(layer.name, index, wbits, tuple(scales), input_site, output_site, upstream, bias))

    nodes: list[onnx.NodeProto] = list(inserted_after.get(-1, []))
    for i, node in enumerate(graph.node):
        nodes.extend(inserted_before.get(i, []))
        for slot in range(len(node.input)):
            if (i, slot) in renames:
                node.input[slot] = renames[(i, slot)]
        nodes.append(node)
        nodes.extend(inserted_after.get(i, []))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.extend(new_inputs)
    graph.initializer.extend(new_initializers)
    return proto, plans


def _clip_range(value: ir.Value) -> tuple[float, float] | None:
    observed = annotations.CALIB_RANGE.get(value)
    if observed is None:
        return None
    return float(observed["lo"]), float(observed["hi"])


def _is_float(value: ir.Value) -> bool:
    return value.dtype is None or value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


def _site_inputs(prefix: str) -> list[onnx.ValueInfoProto]:
    inputs = [helper.make_tensor_value_info(f"{prefix}.on", TensorProto.BOOL, [])]
    inputs += [helper.make_tensor_value_info(f"{prefix}.{p}", TensorProto.FLOAT, []) for p in ("scale", "zp", "qmin", "qmax")]
    return inputs


def _fake_quant(prefix: str, x: str, fallback: str, out: str) -> list[onnx.NodeProto]:
    """``out = on ? (Clip(Round(x / s) + z, qmin, qmax) - z) * s : fallback``."""
    p = prefix

    def node(op: str, inputs: list[str], name: str) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [f"{p}.{name}"], name=f"{p}.{name}")

    return [
        node("Div", [x, f"{p}.scale"], "div"),
        node("Round", [f"{p}.div"], "round"),
        node("Add", [f"{p}.round", f"{p}.zp"], "shift"),
        node("Clip", [f"{p}.shift", f"{p}.qmin", f"{p}.qmax"], "q"),
        node("Sub", [f"{p}.q", f"{p}.zp"], "centred"),
        node("Mul", [f"{p}.centred", f"{p}.scale"], "dq"),
        helper.make_node("Where", [f"{p}.on", f"{p}.dq", fallback], [out], name=f"{p}.select"),
    ]
