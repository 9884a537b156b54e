"""``--measure``: the emitted model timed against float and uniform int8 here, next to predictions.

The cost model ranks configurations for a chip; whether the chosen one is really faster than the
float model, and than the int8 model any quantizer would give, is a question for the machine at
hand. ``measure`` answers it for onnxruntime's CPU provider on this machine:

- three models: the one mpqc emitted, the float model (canonicalized, as mpqc priced it;
  onnxruntime folds the same constants itself), and mpqc's own uniform w8a8 lowering of the same
  model with the same calibration (what ``--uniform w8a8`` writes);
- timed by ``hwspecs.kernels.measure_models``: one intra-op thread, full graph optimization, the
  three sessions in alternation round after round on the same input (a held-out sample, else a
  calibration sample, else a seeded random one), the median of each; the time is the inference
  thread's CPU time, which another process's load does not stretch (the wall clock is kept too);
- predicted by the cost pass for the compilation's spec, for each of the three (the sum the search
  minimizes, ``predicted_total``), when the spec prices them.

The machine is named with the numbers (CPU model, VNNI, onnxruntime version), and nothing is
written: the sessions load from memory. Numbers from one machine never enter the emitted model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from mpqc.core.bits import Bits
from mpqc.hwspecs.errors import SpecError
from mpqc.hwspecs.kernels import measure_models
from mpqc.hwspecs.machine import base_for_machine, cpu_name, vnni_flags
from mpqc.ir import annotations
from mpqc.passes import CompileContext, PassInputError, format_pipeline, resolve_pipeline
from mpqc.passes.analysis.cost import CostPass, predicted_total
from mpqc.passes.infra.instruments import Instrument
from mpqc.passes.lib.describe import static_shapes
from mpqc.pipeline import Pipeline

__all__ = ["INT8", "FloatReference", "Measurement", "Timed", "measure"]

#: The uniform int8 configuration measured next to the chosen one.
INT8 = Bits(8, 8)
#: Seconds of timing per model (``CompileOptions.measure_seconds``).
DEFAULT_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Timed:
    """One model's latency: measured here, and predicted by the cost model (None: not priced)."""

    model: str
    measured_s: float
    wall_s: float
    predicted_s: float | None


@dataclasses.dataclass(frozen=True)
class Measurement:
    """The emitted model, float and uniform int8, timed on this machine (see the module
    docstring)."""

    rows: tuple[Timed, ...]
    cpu: str
    vnni: tuple[str, ...]
    onnxruntime: str
    threads: int
    #: Paired rounds the medians are of.
    runs: int
    #: The spec the predictions come from, and the bundled spec closest to this machine.
    spec: str | None
    machine_spec: str | None
    notes: tuple[str, ...] = ()

    def row(self, model: str) -> Timed:
        return next(row for row in self.rows if row.model == model)

    def machine(self) -> str:
        vnni = ", ".join(self.vnni) if self.vnni else "no VNNI"
        return f"{self.cpu} ({vnni}), onnxruntime {self.onnxruntime}, {self.threads} thread"

    def speedups(self) -> dict[str, tuple[float, float | None]]:
        """The emitted model's speed-up over each other model: (measured, predicted)."""
        mine = self.rows[0]
        result = {}
        for other in self.rows[1:]:
            predicted = (
                other.predicted_s / mine.predicted_s
                if other.predicted_s is not None and mine.predicted_s
                else None
            )
            result[other.model] = (other.measured_s / mine.measured_s, predicted)
        return result

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "rows": [dataclasses.asdict(row) for row in self.rows],
            "speedups": {
                name: {"measured": measured, "predicted": predicted}
                for name, (measured, predicted) in self.speedups().items()
            },
        }


class FloatReference:
    """The float model ``measure`` times and lowers to w8a8, kept as the compilation prepares it.

    An instrument on the compilation's pipeline: a copy right after its calibrate step (else its
    canonicalize step), so measuring does not canonicalize and calibrate the model a second time;
    a pipeline with neither gets a copy of its input, taken here, before it runs.
    """

    def __init__(self, pipeline: str, model: ir.Model) -> None:
        names = [cls.name for cls, _ in resolve_pipeline(pipeline)]
        #: The step after which the copy is taken (None: the input is copied now).
        self.after = next((step for step in ("calibrate", "canonicalize") if step in names), None)
        self.model = model.clone() if self.after is None else None

    def run_before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        pass

    def run_after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: ir.passes.PassResult
    ) -> None:
        if getattr(pass_, "name", None) == self.after:
            self.model = result.model.clone()

    def prepared(self, context: CompileContext) -> ir.Model:
        """The copy, canonicalized and, with calibration data, calibrated (what it lacks is run
        here)."""
        assert self.model is not None, "the pipeline did not run"
        steps = [] if self.after is not None else ["canonicalize"]
        if self.after != "calibrate" and context.calibration is not None:
            steps.append("calibrate")
        if steps:
            Pipeline(",".join(steps), context).run_ir(self.model)
        return self.model


class _Step:
    """How measuring shows to the instruments that watch passes (progress, timing)."""

    name = "measure"


def measure(
    reference: FloatReference,
    emitted: ir.Model,
    context: CompileContext,
    pipeline: str,
    seconds: float = DEFAULT_SECONDS,
    instruments: Sequence[Instrument] = (),
) -> Measurement:
    """Time ``emitted`` (what ``pipeline`` made in ``context``) against the float model
    ``reference`` kept and its uniform w8a8 lowering, and predict all three; ``instruments``
    see it as one more step, ``measure``."""
    step = _Step()
    for instrument in instruments:
        instrument.run_before_pass(step, emitted)  # type: ignore[arg-type]
    measurement = _measure(reference, emitted, context, pipeline, seconds)
    done = ir.passes.PassResult(emitted, modified=False)
    for instrument in instruments:
        instrument.run_after_pass(step, emitted, done)  # type: ignore[arg-type]
    return measurement


def _measure(
    reference: FloatReference,
    emitted: ir.Model,
    context: CompileContext,
    pipeline: str,
    seconds: float,
) -> Measurement:
    chosen = _chosen_bits(emitted)
    quiet = dataclasses.replace(
        context,
        notes=[],
        progress=None,
        wbits=tuple(sorted({*(context.wbits or ()), INT8.w, *(b.w for b in chosen.values())})),
        abits=tuple(sorted({*(context.abits or ()), INT8.a, *(b.a for b in chosen.values())})),
    )
    float_model = reference.prepared(quiet)
    int8 = float_model.clone()
    Pipeline(f"lower-qdq{{uniform={INT8}}}", quiet).run_ir(int8)
    notes = []
    if quiet.calibration is None:
        notes.append(f"uniform {INT8} keeps activations float: there is no calibration data")
    configurations = {"mpqc": chosen, "float": {}, f"uniform {INT8}": {}}
    predicted: dict[str, float | None] = dict.fromkeys(configurations)
    try:
        Pipeline(_cost(pipeline), quiet).run_ir(float_model)
    except PassInputError as exc:
        notes.append(f"no predictions: {exc}")
    else:
        configurations[f"uniform {INT8}"] = _uniform(float_model)
        for name, bits in configurations.items():
            predicted[name] = predicted_total(float_model, bits)
        if predicted["mpqc"] is None:
            notes.append(
                "no prediction for mpqc's model: the spec prices no pair with float "
                "activations (weight-only layers)"
            )
    models = [ir.to_proto(model).SerializeToString() for model in (emitted, float_model, int8)]
    timings = measure_models(models, 1, seconds, feeds=_feed(float_model, quiet))
    rows = tuple(
        Timed(name, timing.cpu_s, timing.wall_s, predicted[name])
        for name, timing in zip(configurations, timings, strict=True)
    )
    return Measurement(
        rows,
        cpu_name(),
        vnni_flags(),
        ort.__version__,
        1,
        min(timing.runs for timing in timings),
        context.hw.name if context.hw is not None else None,
        _closest_spec(),
        tuple(notes),
    )


def _cost(pipeline: str) -> str:
    """The cost pass, with the block size of the compilation's lowering."""
    lower = next((o for cls, o in resolve_pipeline(pipeline) if cls.name == "lower-qdq"), None)
    return format_pipeline(
        [(CostPass, CostPass.Options(block_size=getattr(lower, "block_size", 0)))]
    )


def _chosen_bits(model: ir.Model) -> dict[str, Bits]:
    """The emitted layers' bits, by layer name (main graph: the cost pass prices no body)."""
    bits = {}
    for node in model.graph:
        chosen = annotations.BITS.get(node)
        if chosen is not None:
            bits[node.name or node.outputs[0].name] = annotations.chosen_bits(chosen)
    return bits


def _uniform(analysed: ir.Model) -> dict[str, tuple[int, int]]:
    return {
        node.name or node.outputs[0].name: tuple(INT8)
        for node in analysed.graph
        if annotations.COST.has(node)
    }


def _feed(model: ir.Model, context: CompileContext) -> dict[str, np.ndarray]:
    """The input every model is timed on: a held-out sample, a calibration sample, or seeded
    random numbers in the shapes the cost pass resolved."""
    for data in (context.held_out, context.calibration):
        if data is not None and len(data):
            return {name: np.asarray(array) for name, array in next(iter(data)).items()}
    shapes = static_shapes(model, context)
    rng = context.rng("measure")
    feed = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        shape = shapes[value.name]
        if np.issubdtype(dtype, np.floating):
            feed[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[value.name] = np.zeros(shape, dtype)
    return feed


def _closest_spec() -> str | None:
    try:
        return base_for_machine()
    except SpecError:  # a machine type no bundled spec describes
        return None
