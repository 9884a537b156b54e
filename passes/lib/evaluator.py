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
block-dequantized weight, and at level 4 first rounds A to int8 per block of K — simulated by a
switchable block quantizer on the layer's input, ``_int8_blocks``); an LSTM's/GRU's recurrence
weight is stacked and selected with its W. With graph optimizations on, onnxruntime runs 8-bit layers as
integer kernels (QLinearConv...) whose requantization may round an output level differently; on a
small CNN at w8a8 that moves the logits by up to 0.4% of their range. Each run costs one session
run per sample (or per batch, see ``batch``). The float outputs are computed once and cached as the
reference.

One layer at a time (``errors`` on configurations that quantize a single layer, what sensitivity
analysis asks): the float prefix is not recomputed. One float run per group of layers keeps the
values that cross each layer's cut, and each layer gets a session on its suffix — the nodes
downstream of its controls, every other layer fixed at float (its quantizers removed, its weight
folded to a constant). Measured on PP-OCRv4 (47 layers) and PP-LCNet (33), a configuration then costs
1/2 to 1/6 of a whole-graph run: half the graph on average, without the other layers' quantizer
arithmetic, for a session per layer (0.03-0.1 s) and one prefix run per eight layers. The errors
equal the whole graph's up to float rounding (1e-5 relative on PP-OCRv4: float layers there run with
constant, prepacked weights, as in the lowered model; identical on the test models).

Parallelism: ``errors`` spreads its work — groups of layers, whole-graph configurations — over
``executor`` (any ``concurrent.futures.Executor``, e.g. a Dask client's). Without one it forks local
worker processes (one per idle core, one onnxruntime thread each, so the numbers are those of a
serial run) when the serial work is estimated above ``_LOCAL_WORKERS_PAY_AFTER_S`` and at least two
cores are idle by the load average, else runs here. Measured: sensitivity-output on PP-LCNet (132
configurations) on two cores that four other jobs kept busy (load 7-12) took 34-38 s inline, 39 s
with two forked workers and 50-67 s with two onnxruntime intra-op threads (spinning threads lose
most under contention; in an earlier round at load ~11: 108-133, 111-119 and 89-172 s). Workers
can only pay where cores are free (an idle machine was not available to measure the gain), hence
the load test; threads never won and would not keep the one-thread numbers.

Sessions do not pickle, so the evaluator pickles as its file-backed description (graph, samples and
float outputs written once to a temporary folder); a worker process reads it once and keeps it,
with its sessions, for later tasks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mpqc.core.bits import FLOAT_BITS
from mpqc.ir import annotations
from mpqc.ir.layers import Layer, constant_array, quantizable_layers
from mpqc.passes.lib.grid import (
    activation_grid,
    activation_qparams,
    fake_quant_weight,
    quantize_weight,
)
from mpqc.passes.lib.layout import WeightLayout, block_axis, kn_weight
from mpqc.passes.lib.runtime import session
from mpqc.passes.lib.target import weight_grid_bits
from mpqc.passes.lower.lower_qdq import fusable, output_target

__all__ = ["Config", "Evaluator", "Measure", "output_error"]

#: Layer name -> (weight bits, activation bits); 32 means float, a missing layer stays float.
Config = Mapping[str, tuple[int, int]]
Outputs = list[np.ndarray]
#: A named output distance, or any ``(reference, outputs) -> damage`` over per-sample outputs (a task
#: metric's drop, say; it must pickle to run in worker processes).
Measure = Literal["kl", "mse", "flips"] | Callable[[list[Outputs], list[Outputs]], float]

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
    #: The switch of the int8 block quantizer MatMulNBits at accuracy level 4 applies to the input.
    int8_blocks: str | None = None


class Evaluator:
    """One session that evaluates any bit configuration of ``model`` on ``samples`` (see module docstring).

    ``wbits`` are the weight bit-widths it can select (each costs one copy of the weights in memory);
    activations take any bit-width from 2 to 16. Layers are named as ``quantizable_layers`` names them.
    ``batch`` > 1 concatenates up to that many samples of the same shape along axis 0 into one run
    (for models whose first dimension is the batch; samples are grouped by shape, in order of first
    appearance, so variable-length text or width-varying lines batch by length without padding):
    far less per-run overhead, and the built-in measures, which are per-row means or sums, do not
    change. A callable measure sees the batches as its samples.
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
        # The target may round some pairs' weights to a narrower grid (passes/lib/target.py): prepare
        # those grids too, so a configuration is simulated exactly as lower-qdq lowers it. A plain
        # table (not the spec) travels to worker processes.
        self._grid_bits = {
            (w, a): weight_grid_bits(spec, w, a) for w in wbits for a in range(2, 17)
        }
        wbits = set(wbits) | set(self._grid_bits.values())
        self.act_signed = act_signed
        self.fuse_outputs = fuse_outputs
        self.executor = executor
        self.weight_only = layout.weight_only
        # Which (layer, weight bits, activation bits) lower to MatMulNBits, as a plain table: IR layers
        # do not travel to worker processes (pickling a graph recurses through every node).
        self._matmul_nbits = {
            (layer.name, w, a): layout.matmul_nbits(layer, w, a)
            for layer in (quantizable_layers(model.graph) if layout.weight_only else [])
            for w in (*wbits, FLOAT_BITS)
            for a in (*range(2, 17), FLOAT_BITS)
        }
        proto, plans = _build(model, tuple(sorted(set(wbits))), fuse_outputs, layout)
        self._plans = {plan.name: plan for plan in plans}
        self.layers = [plan.name for plan in plans]
        self.output_names = [o.name for o in proto.graph.output]
        self._folder: str | None = (
            None  # where the graph, samples and reference are written for workers
        )
        self._reference_seconds = 0.0
        self._session: ort.InferenceSession | None = None
        self._reference: list[Outputs] | None = None
        self._parsed: onnx.ModelProto | None = proto
        self._float: _Fixed | None = None  # every control fixed at float (layer_errors' prefix)
        self._slices: dict[tuple[str, int], np.ndarray] = {}  # weight stacks' entries, read once

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
            start = time.perf_counter()
            self._reference = self.run({})
            self._reference_seconds = time.perf_counter() - start
        return self._reference

    def error(self, config: Config, measure: Measure = "mse") -> float:
        """How far ``config``'s outputs are from float (see ``output_error``)."""
        return output_error(self.reference, self.run(config), measure)

    def errors(self, configs: Sequence[Config], measure: Measure = "mse") -> list[float]:
        """``error`` of each configuration, in order.

        Configurations that quantize a single layer run on that layer's suffix after one float run
        of the prefix per group of layers (``layer_errors``); the others run the whole graph. The
        work goes to ``executor``; without one, to local worker processes when it pays (see
        ``_executor``), else it runs here.
        """
        by_layer: dict[str, list[int]] = {}
        whole: list[int] = []
        for i, config in enumerate(configs):
            moved = [
                name for name, bits in config.items() if tuple(bits) != (FLOAT_BITS, FLOAT_BITS)
            ]
            if len(moved) == 1:
                by_layer.setdefault(moved[0], []).append(i)
            else:
                whole.append(i)
        ordered = [name for name in self.layers if name in by_layer]
        groups = [
            ordered[i : i + _LAYERS_PER_PREFIX] for i in range(0, len(ordered), _LAYERS_PER_PREFIX)
        ]
        jobs: list[tuple[str, Any]] = [
            ("layer_errors", [(name, [dict(configs[i]) for i in by_layer[name]]) for name in group])
            for group in groups
        ]
        jobs += [("error", dict(configs[i])) for i in whole]
        with self._executor(len(jobs), len(configs)) as executor:
            if executor is None:
                outcomes = [getattr(self, method)(argument, measure) for method, argument in jobs]
            else:
                self._write_files()
                futures = [
                    executor.submit(_in_worker, self, method, argument, measure)
                    for method, argument in jobs
                ]
                outcomes = [future.result() for future in futures]
        results: list[float] = [0.0] * len(configs)
        for group, group_errors in zip(groups, outcomes):
            for name, layer_errors in zip(group, group_errors):
                for i, error in zip(by_layer[name], layer_errors):
                    results[i] = error
        for i, error in zip(whole, outcomes[len(groups) :]):
            results[i] = error
        return results

    def layer_errors(
        self, task: Sequence[tuple[str, Sequence[Config]]], measure: Measure = "mse"
    ) -> list[list[float]]:
        """Per (layer, configurations quantizing only that layer): each configuration's error.

        The float model runs once over the samples, keeping the values every listed layer's suffix
        reads (the layer's input and whatever else crosses the cut); then each layer's suffix — the
        nodes downstream of its controls, with every other layer fixed at float and its quantizers
        removed — gets one session and runs each configuration. The numbers are those of ``run``:
        the same nodes compute on the same values; only the unchanged prefix is not recomputed.
        """
        float_controls = self._float_controls()
        proto = self._proto()
        suffixes: dict[str, onnx.ModelProto] = {}
        boundaries: dict[str, list[str]] = {}
        for name, _ in task:
            own = f"{_PREFIX}.{self._plans[name].index}."
            fixed = _fix_controls(
                proto,
                {k: v for k, v in float_controls.items() if not k.startswith(own)},
                self._slices,
            )
            boundaries[name] = _suffix_boundary(proto, fixed, own)
            suffixes[name] = _cut(proto, fixed, boundaries[name], self.output_names)
        wanted = sorted(
            {b for boundary in boundaries.values() for b in boundary} - set(self.samples[0])
        )
        prefix = (
            session(_cut(proto, self._float_model(), [], wanted).SerializeToString())
            if wanted
            else None
        )
        values = [
            {**sample, **dict(zip(wanted, prefix.run(wanted, sample)))} if prefix else dict(sample)
            for sample in self.samples
        ]
        del prefix
        results = []
        for name, configs in task:
            boundary, suffix_proto = boundaries[name], suffixes.pop(name)
            for value in suffix_proto.graph.input:
                if value.name in boundary:
                    value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(
                        np.asarray(values[0][value.name]).dtype
                    )
            inputs = {value.name for value in suffix_proto.graph.input}
            suffix = session(suffix_proto.SerializeToString())
            errors = []
            for config in configs:
                controls = {k: v for k, v in self._controls(config).items() if k in inputs}
                outputs = [
                    suffix.run(self.output_names, {**{b: v[b] for b in boundary}, **controls})
                    for v in values
                ]
                errors.append(output_error(self.reference, outputs, measure))
            results.append(errors)
        return results

    def objective(self, measure: Measure = "mse") -> Callable[[Config], float]:
        """``config -> error``: the exact evaluation a search calls."""
        return lambda config: self.error(config, measure)

    # -- the control inputs -------------------------------------------------------------------

    def _controls(self, config: Config) -> dict[str, np.ndarray]:
        unknown = sorted(set(config) - set(self._plans))
        if unknown:
            raise KeyError(
                f"no quantizable layer named {', '.join(map(repr, unknown))} (layers: {', '.join(self.layers)})"
            )
        feeds: dict[str, np.ndarray] = {}
        bits = {
            name: tuple(int(b) for b in config.get(name, (FLOAT_BITS, FLOAT_BITS)))
            for name in self._plans
        }
        input_scale: dict[int, np.float32 | None] = {}
        output_scale: dict[int, np.float32 | None] = {}
        if self.weight_only:  # lower-qdq keeps every activation float
            bits = {name: (w, FLOAT_BITS) for name, (w, _) in bits.items()}
        for name, plan in self._plans.items():
            wbits, abits = bits[name]
            feeds[f"{_PREFIX}.{plan.index}.w"] = np.array(
                self._weight_choice(plan, self._grid_bits.get((wbits, abits), wbits)), np.int64
            )
            input_scale[plan.index] = self._site_feeds(feeds, plan.input_site, abits)
            if plan.int8_blocks is not None:
                grid_wbits = self._grid_bits.get((wbits, abits), wbits)
                feeds[plan.int8_blocks] = np.array(self._matmul_nbits[(name, grid_wbits, abits)])
            fused = self.fuse_outputs and fusable(wbits, abits)
            output_scale[plan.index] = self._site_feeds(
                feeds, plan.output_site, abits if fused else FLOAT_BITS
            )
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
            raise ValueError(
                f"layer {plan.name!r}: weight bits {wbits} not prepared; this evaluator was built for {list(plan.wbits)}"
            )
        return plan.wbits.index(wbits)

    def _site_feeds(
        self, feeds: dict[str, np.ndarray], site: _Site | None, bits: int
    ) -> np.float32 | None:
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
            self._session = session(
                self._path("model.onnx")
                if self._folder is not None
                else self._proto().SerializeToString()
            )
        return self._session

    def _proto(self) -> onnx.ModelProto:
        """The fake-quant graph (read back from its file in a worker process)."""
        if self._parsed is None:
            self._parsed = onnx.load(self._path("model.onnx"))
        return self._parsed

    def _float_controls(self) -> dict[str, np.ndarray]:
        return self._controls({})

    def _float_model(self) -> _Fixed:
        """The fake-quant graph with every control fixed at float: the float model."""
        if self._float is None:
            self._float = _fix_controls(self._proto(), self._float_controls(), self._slices)
        return self._float

    @contextlib.contextmanager
    def _executor(self, jobs: int, configs: int) -> Iterator[concurrent.futures.Executor | None]:
        """The user's executor; else local worker processes when the work pays for starting them; else None."""
        if self.executor is not None or jobs < 2 or not _CAN_FORK:
            yield self.executor
            return
        workers = min(jobs, _idle_cores())
        self.reference  # noqa: B018 - computed here, timed, and shipped to the workers
        if workers < 2 or configs * self._reference_seconds / 2 < _LOCAL_WORKERS_PAY_AFTER_S:
            yield None
            return
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork")
        ) as pool:
            yield pool

    def _path(self, name: str) -> str:
        assert self._folder is not None, (
            "the evaluator's files are written only for worker processes"
        )
        return os.path.join(self._folder, name)

    def _write_files(self) -> None:
        """Put the graph, the samples and the float outputs on disk once, so that pickling stays cheap."""
        if self._folder is not None:
            return
        reference = self.reference
        folder = tempfile.mkdtemp(prefix="mpqc-evaluator-")
        weakref.finalize(self, shutil.rmtree, folder, True)
        pathlib.Path(folder, "model.onnx").write_bytes(self._proto().SerializeToString())
        np.savez(
            os.path.join(folder, "samples.npz"),
            **{f"{i}/{k}": v for i, s in enumerate(self.samples) for k, v in s.items()},
        )
        np.savez(
            os.path.join(folder, "reference.npz"),
            **{f"{i}/{k}": v for i, outputs in enumerate(reference) for k, v in enumerate(outputs)},
        )
        self._folder = folder

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], Evaluator], tuple[dict[str, Any]]]:
        """Pickled as its file-backed description; unpickled once per process (see ``_revive``)."""
        self._write_files()
        state = dict(self.__dict__)
        state.update(
            _session=None,
            samples=None,
            executor=None,
            _reference=None,
            _parsed=None,
            _float=None,
            _slices={},
        )
        return _revive, (state,)


def _revive(state: dict[str, Any]) -> Evaluator:
    """The evaluator described by ``state``, read from its files the first time this process sees it
    and reused after, so a worker opens each session once however many tasks it runs."""
    folder = state["_folder"]
    if folder not in _WORKER_CACHE:
        evaluator = Evaluator.__new__(Evaluator)
        evaluator.__dict__.update(state)
        evaluator.samples = _load_indexed(evaluator._path("samples.npz"))
        evaluator._reference = [
            [outputs[k] for k in sorted(outputs, key=int)]
            for outputs in _load_indexed(evaluator._path("reference.npz"))
        ]
        _WORKER_CACHE[folder] = evaluator
    return _WORKER_CACHE[folder]


def _load_indexed(path: str) -> list[dict[str, np.ndarray]]:
    """An archive written as ``{index}/{key}`` entries, back as one dict per index."""
    with np.load(path) as archive:
        items: dict[int, dict[str, np.ndarray]] = {}
        for entry in archive.files:
            index, key = entry.split("/", 1)
            items.setdefault(int(index), {})[key] = archive[entry]
    return [items[i] for i in sorted(items)]


#: Local workers are forked: "spawn" and "forkserver" re-import the caller's main module in every
#: worker, which re-runs any script that lacks an ``if __name__ == "__main__":`` guard.
_CAN_FORK = sys.platform.startswith("linux")


def _idle_cores() -> int:
    """Cores this process may use that other processes are not already keeping busy (1-minute load)."""
    return len(os.sched_getaffinity(0)) - int(os.getloadavg()[0])


#: Serial seconds of work above which ``errors`` starts local worker processes when given no executor:
#: a spawned worker takes 2-3 s to import onnxruntime and open its session.
_LOCAL_WORKERS_PAY_AFTER_S = 10.0

#: Per process: evaluators revived from pickles, by their folder.
_WORKER_CACHE: dict[str, Evaluator] = {}


def _in_worker(evaluator: Evaluator, method: str, argument: Any, measure: Measure) -> Any:
    """``evaluator.<method>(argument, measure)``, a task a worker process runs."""
    return getattr(evaluator, method)(argument, measure)


def _batched(samples: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    """Samples of one shape concatenated along axis 0, ``batch`` at most per run (no padding)."""
    if batch <= 1:
        return samples
    by_shape: dict[tuple[tuple[str, tuple[int, ...], str], ...], list[dict[str, np.ndarray]]] = {}
    for sample in samples:
        key = tuple(
            (name, np.shape(value)[1:], str(np.asarray(value).dtype))
            for name, value in sorted(sample.items())
        )
        by_shape.setdefault(key, []).append(sample)
    groups = [same[i : i + batch] for same in by_shape.values() for i in range(0, len(same), batch)]
    try:
        return [
            {name: np.concatenate([s[name] for s in group]) for name in group[0]}
            for group in groups
        ]
    except ValueError as exc:
        raise ValueError(f"cannot batch these samples along axis 0 ({exc}); use batch=1") from None


def _int32_bias(bias: np.ndarray, x_scale: np.float32, w_scale: np.ndarray) -> np.ndarray:
    """The bias as lower-qdq stores it (int32 at s_x * s_w, widened to |b| / 2^30 where that overflows), dequantized."""
    scale = np.broadcast_to(
        np.float32(x_scale) * w_scale.astype(np.float32).reshape(-1), bias.shape
    )
    scale = np.maximum(scale, np.abs(bias).astype(np.float32) / np.float32(2**30)).astype(
        np.float32
    )
    q = np.rint(bias / scale).astype(np.int32)
    return (q.astype(np.float32) * scale).astype(np.float32)


# --- One layer at a time: the float prefix once, each layer's suffix per configuration --------------

#: Layers whose suffix boundaries one float run of the prefix collects: more share one run, fewer bound
#: the memory the kept values take (PP-OCRv4: ~30 MB per layer over 32 samples).
_LAYERS_PER_PREFIX = 8


@dataclasses.dataclass(frozen=True)
class _Fixed:
    """The fake-quant graph's nodes with some controls fixed (see ``_fix_controls``); its initializers
    stay in the original proto, so fixing controls copies no weights."""

    nodes: list[onnx.NodeProto]
    #: Fixed controls and the weight slices that replace selections by them: new initializers.
    constants: dict[str, np.ndarray]


def _fix_controls(
    proto: onnx.ModelProto,
    controls: Mapping[str, np.ndarray],
    slices: dict[tuple[str, int], np.ndarray],
) -> _Fixed:
    """``proto``'s nodes with the control inputs in ``controls`` fixed: a ``Where`` whose condition
    is fixed becomes the branch it selects (a quantizer that is off costs nothing), and a ``Gather``
    of an initializer by a fixed index becomes that entry (a weight fixed at one candidate is a plain
    constant, and the other candidates are not carried along). ``slices`` caches the entries read."""
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    constants = dict(controls)
    alias: dict[str, str] = {}
    nodes = []
    for original in proto.graph.node:
        selector = (
            controls.get(original.input[1])
            if original.op_type == "Gather" and len(original.input) == 2
            else None
        )
        condition = controls.get(original.input[0]) if original.op_type == "Where" else None
        axis = next((a.i for a in original.attribute if a.name == "axis"), 0)
        if condition is not None and np.asarray(condition).size == 1:
            alias[original.output[0]] = original.input[1] if bool(condition) else original.input[2]
        elif (
            selector is not None
            and np.asarray(selector).ndim == 0
            and axis == 0
            and original.input[0] in initializers
        ):
            key = (original.input[0], int(selector))
            if key not in slices:
                slices[key] = numpy_helper.to_array(initializers[key[0]])[key[1]]
            name = f"{key[0]}[{key[1]}]"
            constants[name] = slices[key]
            alias[original.output[0]] = name
        else:
            node = onnx.NodeProto()
            node.CopyFrom(original)
            nodes.append(node)

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    for node in nodes:
        for slot, name in enumerate(node.input):
            node.input[slot] = resolve(name)
    outputs = {value.name for value in proto.graph.output}
    nodes += [
        helper.make_node("Identity", [resolve(name)], [name]) for name in alias if name in outputs
    ]
    return _Fixed(nodes, constants)


def _uses(node: onnx.NodeProto) -> list[str]:
    """The values ``node`` reads, including those its subgraphs read from the enclosing scope."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in body.node:
                names += _uses(inner)
    return names


def _suffix_boundary(proto: onnx.ModelProto, fixed: _Fixed, controls: str) -> list[str]:
    """The cut in front of the nodes downstream of the inputs named ``controls*``: the non-constant
    values they read but do not compute, and the graph outputs they do not compute."""
    constant = {tensor.name for tensor in proto.graph.initializer} | set(fixed.constants)
    inputs = [value.name for value in proto.graph.input if value.name not in fixed.constants]
    tainted = {name for name in inputs if name.startswith(controls)}
    read: set[str] = set()
    produced: set[str] = set()
    for node in fixed.nodes:
        uses = _uses(node)
        if tainted.intersection(uses):
            tainted.update(node.output)
            produced.update(node.output)
            read.update(uses)
        elif all(name in constant for name in uses):
            constant.update(node.output)
    defined = set(inputs) | {name for node in fixed.nodes for name in node.output}
    read.update(value.name for value in proto.graph.output)
    return sorted(
        name for name in read if name in defined and name not in produced | constant | tainted
    )


def _cut(
    proto: onnx.ModelProto, fixed: _Fixed, given: Sequence[str], outputs: Sequence[str]
) -> onnx.ModelProto:
    """The nodes of ``fixed`` that compute ``outputs`` from the values ``given`` (new float inputs of
    any shape: set another element type on them as needed), the graph's inputs and constants; only
    the initializers they read are copied."""
    cut = set(given)
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(fixed.nodes):
        if any(name in needed and name not in cut for name in node.output):
            kept.append(node)
            needed.update(_uses(node))
    inputs = [
        value
        for value in proto.graph.input
        if value.name in needed and value.name not in cut and value.name not in fixed.constants
    ]
    inputs += [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        for name in given
        if name in needed
    ]
    declared = {value.name: value for value in proto.graph.output}
    initializers = [
        tensor
        for tensor in proto.graph.initializer
        if tensor.name in needed and tensor.name not in fixed.constants
    ]
    initializers += [
        numpy_helper.from_array(np.asarray(value), name)
        for name, value in fixed.constants.items()
        if name in needed
    ]
    sub = helper.make_graph(
        kept[::-1],
        proto.graph.name,
        inputs,
        [declared.get(name) or onnx.ValueInfoProto(name=name) for name in outputs],
        initializers,
    )
    model = helper.make_model(sub, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    return model


# --- Measures -----------------------------------------------------------------------------------


def output_error(reference: list[Outputs], outputs: list[Outputs], measure: Measure) -> float:
    """Distance of ``outputs`` from ``reference`` (both per sample, per output).

    - ``mse``: squared error over all outputs relative to their energy (1/SQNR), scale-free;
    - ``kl``: mean KL(p_ref || p) of the first output's last axis, after a softmax unless the output
      already holds probabilities (rows non-negative and summing to 1);
    - ``flips``: fraction of the first output's rows whose arg-max changed (top-1 disagreement);
    - a callable: whatever it returns for ``(reference, outputs)``.
    """
    if callable(measure):
        return float(measure(reference, outputs))
    if measure == "mse":
        signal = sum(float(np.sum(np.square(r, dtype=np.float64))) for rs in reference for r in rs)
        noise = sum(
            float(np.sum(np.square(np.asarray(o, np.float64) - r)))
            for rs, os_ in zip(reference, outputs)
            for r, o in zip(rs, os_)
        )
        return noise / signal if signal > 0 else noise
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


def _weight_stack(
    layer: Layer, index: int, wbits: tuple[int, ...], block: Callable[[int], int]
) -> tuple[np.ndarray, list[np.ndarray | None]]:
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


def _build(
    model: ir.Model, wbits: tuple[int, ...], fuse_outputs: bool, layout: WeightLayout
) -> tuple[onnx.ModelProto, list[_LayerPlan]]:
    """The fake-quant ModelProto with control inputs, and where each layer's controls are."""
    layers = quantizable_layers(model.graph)
    proto = ir.to_proto(model)
    graph = proto.graph
    producer_index = {out: i for i, node in enumerate(graph.node) for out in node.output}
    layer_node = {id(layer): producer_index[layer.node.outputs[0].name] for layer in layers}
    inserted_before: dict[
        int, list[onnx.NodeProto]
    ] = {}  # original node index -> nodes to insert before it
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
            stack, slot_scales = _weight_stack(
                layer, slot, wbits, lambda bits: layout.block(layer, bits, FLOAT_BITS)
            )
            scales = scales or slot_scales
            stack_name = f"{_PREFIX}.{index}.{slot}.wstack"
            new_initializers.append(numpy_helper.from_array(stack, stack_name))
            value = f"{choice}.{slot}.value"
            before.append(
                helper.make_node(
                    "Gather", [stack_name, choice], [value], name=f"{choice}.{slot}.gather", axis=0
                )
            )
            renames[(node_index, slot)] = value

        input_site = None
        activation = layer.activation
        if activation is not None and layer.activation_index is not None and _is_float(activation):
            input_site = _Site(f"{_PREFIX}.{index}.in", _clip_range(activation))
            fallback = viewed.get(activation.name, activation.name)
            before.extend(
                _fake_quant(input_site.prefix, activation.name, fallback, f"{input_site.prefix}.y")
            )
            new_inputs += _site_inputs(input_site.prefix)
            renames[(node_index, layer.activation_index)] = f"{input_site.prefix}.y"

        bias = None
        if layer.node.op_type in ("Conv", "Gemm") and len(layer.node.inputs) >= 3:
            bias_array = constant_array(layer.node.inputs[2])
            if bias_array is not None and bias_array.ndim == 1:
                bias = bias_array.astype(np.float32)
                bias_name = f"{_PREFIX}.{index}.bias"
                new_inputs.append(
                    helper.make_tensor_value_info(bias_name, TensorProto.FLOAT, list(bias.shape))
                )
                renames[(node_index, 2)] = bias_name
        int8_blocks = None
        if (
            layout.weight_only
            and layout.accuracy_level == 4
            and layout.matmul_nbits(layer, max(wbits), FLOAT_BITS)
        ):
            assert activation is not None and layer.activation_index is not None
            int8_blocks = f"{_PREFIX}.{index}.a_int8"
            source = renames.get((node_index, layer.activation_index), activation.name)
            k = kn_weight(layer).shape[0]
            before.extend(_int8_blocks(int8_blocks, source, k, layout.nbits_block, _opset(proto)))
            new_inputs.append(
                helper.make_tensor_value_info(f"{int8_blocks}.on", TensorProto.BOOL, [])
            )
            renames[(node_index, layer.activation_index)] = f"{int8_blocks}.y"
            int8_blocks += ".on"
        output_site = targets[index][1] if index in targets else None
        upstream = feeding.get(activation.name) if activation is not None else None
        plans.append(
            _LayerPlan(
                layer.name,
                index,
                wbits,
                tuple(scales),
                input_site,
                output_site,
                upstream,
                bias,
                int8_blocks,
            )
        )

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
    return value.dtype is None or value.dtype in (
        ir.DataType.FLOAT,
        ir.DataType.FLOAT16,
        ir.DataType.DOUBLE,
    )


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _int8_blocks(prefix: str, x: str, k: int, block: int, opset: int) -> list[onnx.NodeProto]:
    """``y = on ? A rounded as MatMulNBits' accuracy level 4 rounds it : x`` for ``x`` of shape [..., k].

    Per row, per block of ``block`` values along the last axis (the last block zero-padded): levels
    a · (127 / max|a|) rounded half to even, dequantized at scale max|a| / 127 — onnxruntime's kernel
    multiplies by that inverse rather than dividing by the scale, which decides exact ties (measured;
    the tests compare). A block of zeros stays zero.
    """
    p = prefix
    padded = -(-k // block) * block

    def node(op: str, inputs: list[str], name: str, **attributes: object) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [f"{p}.{name}"], name=f"{p}.{name}", **attributes)

    def const(name: str, array: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant",
            [],
            [f"{p}.{name}"],
            name=f"{p}.{name}",
            value=numpy_helper.from_array(array, f"{p}.{name}"),
        )

    reduce = (
        node("ReduceMax", [f"{p}.abs", f"{p}.last"], "amax", keepdims=1)
        if opset >= 18
        else node("ReduceMax", [f"{p}.abs"], "amax", axes=[-1], keepdims=1)
    )
    return [
        const("rows", np.array([-1, k], np.int64)),
        const("padded_rows", np.array([-1, padded], np.int64)),
        const("blocks", np.array([-1, padded // block, block], np.int64)),
        const("pads", np.array([0, 0, 0, padded - k], np.int64)),
        const("last", np.array([-1], np.int64)),
        const("levels", np.array(127.0, np.float32)),
        const("zero", np.array(0.0, np.float32)),
        const("start", np.array([0], np.int64)),
        const("stop", np.array([k], np.int64)),
        node("Shape", [x], "shape"),
        node("Reshape", [x, f"{p}.rows"], "2d"),
        node("Pad", [f"{p}.2d", f"{p}.pads"], "padded"),
        node("Reshape", [f"{p}.padded", f"{p}.blocks"], "3d"),
        node("Abs", [f"{p}.3d"], "abs"),
        reduce,
        node("Div", [f"{p}.levels", f"{p}.amax"], "reciprocal"),
        node("Equal", [f"{p}.amax", f"{p}.zero"], "empty"),
        node("Where", [f"{p}.empty", f"{p}.zero", f"{p}.reciprocal"], "inverse"),
        node("Mul", [f"{p}.3d", f"{p}.inverse"], "ratio"),
        node("Round", [f"{p}.ratio"], "q"),
        node("Div", [f"{p}.amax", f"{p}.levels"], "scale"),
        node("Mul", [f"{p}.q", f"{p}.scale"], "dq"),
        node("Reshape", [f"{p}.dq", f"{p}.padded_rows"], "dq2d"),
        node("Slice", [f"{p}.dq2d", f"{p}.start", f"{p}.stop", f"{p}.last"], "cut"),
        node("Reshape", [f"{p}.cut", f"{p}.shape"], "dqx"),
        helper.make_node("Where", [f"{p}.on", f"{p}.dqx", x], [f"{p}.y"], name=f"{p}.select"),
    ]


def _site_inputs(prefix: str) -> list[onnx.ValueInfoProto]:
    inputs = [helper.make_tensor_value_info(f"{prefix}.on", TensorProto.BOOL, [])]
    inputs += [
        helper.make_tensor_value_info(f"{prefix}.{p}", TensorProto.FLOAT, [])
        for p in ("scale", "zp", "qmin", "qmax")
    ]
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
