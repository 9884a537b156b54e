"""What a model costs: file size and latency on onnxruntime's CPU provider.

Latency is the median, over repeats, of the mean time per sample over a fixed handful of evaluation
inputs, after warm-up, with ``intra_op_num_threads`` pinned (1 and 2 in the benchmark) and one
inter-op thread, full graph optimization. On a shared machine the absolute numbers drift with the
load, so each repeat also times the float model right next to the candidate (alternating which goes
first) and the ratio to float is the median of those back-to-back ratios: that number survives a
busy machine far better than two absolute medians taken minutes apart. With one intra-op thread
onnxruntime runs the graph on the calling thread, so 1-thread times are that thread's CPU time,
which another process's load does not inflate; with two threads they are wall clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from bench.tasks.base import Inputs, Runner


def session(model: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with a fixed thread count and quiet logging (shape warnings are not news)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def runner(sess: ort.InferenceSession, output_names: Sequence[str] | None = None) -> Runner:
    """A task runner over a session: one input dict in, the requested outputs out."""
    names = list(output_names) if output_names else None
    return lambda inputs: sess.run(names, inputs)


def file_size_mb(model: Path) -> float:
    """Bytes on disk (the model file plus any external-data files it names), in MB (10^6 bytes)."""
    total = model.stat().st_size
    proto = onnx.load(str(model), load_external_data=False)
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    total += sum((model.parent / location).stat().st_size for location in locations)
    return total / 1e6


@dataclass(frozen=True)
class Latency:
    """Median milliseconds per sample, and the median back-to-back ratio to the reference model."""

    ms: float
    vs_reference: float


def _seconds_per_pass(sess: ort.InferenceSession, inputs: Sequence[Inputs], threads: int) -> float:
    """One pass over ``inputs``: the calling thread's CPU time with one intra-op thread (the run
    happens there), wall clock otherwise (the other thread's work would be missed)."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    start = clock()
    for sample in inputs:
        sess.run(None, sample)
    return clock() - start


def paired_latency(
    model: Path,
    reference: Path,
    inputs: Sequence[Inputs],
    threads: int,
    repeats: int = 10,
    warmup: int = 2,
) -> Latency:
    """Time ``model`` and ``reference`` in alternation; the reference itself gets ratio 1."""
    candidate = session(model, threads)
    baseline = candidate if model == reference else session(reference, threads)
    for _ in range(warmup):
        _seconds_per_pass(candidate, inputs, threads)
        if baseline is not candidate:
            _seconds_per_pass(baseline, inputs, threads)
    times, ratios = [], []
    for repeat in range(repeats):
        if baseline is candidate:
            times.append(_seconds_per_pass(candidate, inputs, threads))
            ratios.append(1.0)
            continue
        if repeat % 2:
            base = _seconds_per_pass(baseline, inputs, threads)
            times.append(_seconds_per_pass(candidate, inputs, threads))
        else:
            times.append(_seconds_per_pass(candidate, inputs, threads))
            base = _seconds_per_pass(baseline, inputs, threads)
        ratios.append(times[-1] / base)
    return Latency(statistics.median(times) * 1000 / len(inputs), statistics.median(ratios))
