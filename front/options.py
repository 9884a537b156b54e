"""``CompileOptions``: everything one compilation is asked to do, in one frozen object.

The ``mpqc`` command fills one from its flags, and Python callers build one with keywords::

    options = mpqc.CompileOptions(hw="arm_a72", calibration="calib/", max_size="0.25x")
    result = mpqc.compile("model.onnx", options)
    w4a8 = mpqc.compile("model.onnx", dataclasses.replace(options, max_size=None, uniform="w4a8"))

The options fall in three groups. The *inputs* of the compilation — the chip, the data, the
budgets, the candidate bits, the shapes — become its ``CompileContext``, which every pass reads
(``compilation_context``, shared with ``mpqc-opt`` so that both commands see the same
compilation). The *policy* — ``uniform``, ``weight_only``, ``block_size``, ``calibrate_method``,
``strategy``, ``recover`` — are the options of the ``default`` pipeline (``passes/pipelines.py``),
written as ``default{...}``, unless ``pipeline`` names other steps. The rest says how to run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import onnx_ir as ir

from mpqc import hwspecs
from mpqc import ir as mir
from mpqc.measure import DEFAULT_SECONDS
from mpqc.passes import CompileContext, PassInputError, format_pipeline, load_calibration
from mpqc.passes.analysis.calibrate import Method
from mpqc.passes.choose.search import resolve_budget
from mpqc.passes.infra.instruments import Instrument
from mpqc.passes.lib.describe import check_shapes
from mpqc.passes.lib.runtime import external_folder
from mpqc.passes.pipelines import DefaultPipeline, default_candidates

__all__ = ["CompileOptions", "check_before_work", "compilation_context"]

#: Budget fields and the objective each one limits.
BUDGETS = {"max_size": "size", "max_latency": "latency", "max_energy": "energy", "max_bops": "bops"}


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """What one compilation is asked to do (see the module docstring for the groups)."""

    #: A bundled spec name, a spec .yaml path or a loaded ``HardwareSpec`` (None: no chip).
    hw: str | hwspecs.HardwareSpec | None = "generic"
    #: A folder of .npz/.npy samples, an onnxruntime CalibrationDataReader or input dicts; every
    #: fifth sample is held out for verification.
    calibration: Any = None
    #: Static sizes of symbolic dims by dim name ({"N": 1}) or whole input shapes by input name.
    shapes: Mapping[str, int | tuple[int, ...]] = dataclasses.field(default_factory=dict)
    #: The user's task metric: a function of an ``onnx.ModelProto``, higher is better.
    eval_fn: Callable[[Any], float] | None = None
    #: Budgets: a ratio of the spec's reference model ("0.25x") or a quantity ("3MB", "2ms", ...).
    max_size: str | float | None = None
    max_latency: str | float | None = None
    max_energy: str | float | None = None
    max_bops: str | float | None = None
    #: Candidate bits the search picks among (None: ``default_candidates`` of the chip).
    wbits: tuple[int, ...] | None = None
    abits: tuple[int, ...] | None = None
    #: The default pipeline's options (``passes/pipelines.py``).
    uniform: str = ""
    weight_only: bool = False
    block_size: int = 0
    calibrate_method: Method = "minmax"
    strategy: str = "ilp"
    recover: bool | None = None
    #: Lower this plan file (``--plan-out``'s .yaml, or onnxruntime's overrides .json) instead of
    #: searching.
    plan: str = ""
    #: Run this pipeline text instead of ``default{...}`` (the policy options above then do
    #: nothing).
    pipeline: str | None = None
    seed: int = 0
    #: Runs exact evaluations: a process pool, or a Dask client's ``get_executor()``.
    executor: concurrent.futures.Executor | None = None
    #: A folder that receives every point of the searched front, lowered and verified.
    emit_pareto: str | os.PathLike | None = None
    #: Write the lowered plan here: mpqc's .yaml, or onnxruntime's overrides by a .json name.
    plan_out: str | os.PathLike | None = None
    #: Watch the passes run (IR printers, timers): ``run_before_pass``/``run_after_pass``.
    instruments: tuple[Instrument, ...] = ()
    #: Check the model with onnx's checker and an onnxruntime session after every pass, naming the
    #: pass that broke it (``VerifyEach``).
    verify_each: bool = False
    #: Show progress on stderr: a live bar on a terminal, else a line per pass, for whatever runs
    #: longer than two seconds (``Progress``).
    progress: bool = False
    #: Time the emitted model against float and uniform w8a8 on this machine, next to the cost
    #: model's predictions (``mpqc.measure``; ``CompileResult.measurement``), for about
    #: ``measure_seconds`` per model.
    measure: bool = False
    measure_seconds: float = DEFAULT_SECONDS

    def constraints(self) -> dict[str, str | float]:
        """The budgets given, by objective: ``{"size": "0.25x"}``."""
        given = {objective: getattr(self, name) for name, objective in BUDGETS.items()}
        return {objective: value for objective, value in given.items() if value is not None}

    def pipeline_text(self) -> str:
        """The pipeline to run: ``pipeline``, or ``default{...}`` with the policy options given.

        A policy option given with ``pipeline`` would do nothing, so it is refused rather than
        silently dropped: the pipeline text is where such choices go.
        """
        fields = dataclasses.fields(DefaultPipeline.Options)
        policy = {field.name: getattr(self, field.name) for field in fields}
        if self.pipeline:
            for field in fields:
                if policy[field.name] != field.default:
                    raise PassInputError(
                        "is an option of the default pipeline, which the given pipeline replaces: "
                        "write it in the pipeline's text instead",
                        field=field.name,
                    )
            return self.pipeline
        return format_pipeline([(DefaultPipeline, DefaultPipeline.Options(**policy))])


def compilation_context(model: ir.Model, options: CompileOptions) -> CompileContext:
    """The ``CompileContext`` of compiling ``model`` with ``options``: spec, data split into fitting
    and held-out samples, the float reference, budgets, candidate bits, shapes and seed."""
    check_before_work(model, options)
    spec = hwspecs.load(options.hw) if options.hw is not None else None
    constraints = options.constraints()
    default_w, default_a = (
        default_candidates(spec, constraints) if spec is not None else (None, None)
    )
    context = CompileContext(
        hw=spec,
        seed=options.seed,
        eval_fn=options.eval_fn,
        wbits=tuple(options.wbits) if options.wbits else default_w,
        abits=tuple(options.abits) if options.abits else default_a,
        constraints=constraints,
        shapes=dict(options.shapes),
        executor=options.executor,
    )
    # The float model as loaded: external data read in, or, for a model that stays external,
    # referred to in the folder it was loaded from (not the file's bytes, whose external references
    # would not resolve in an onnxruntime session made from bytes).
    folder = external_folder(model)
    if folder is not None or mir.io.fits_in_protobuf(model):
        context.reference = ir.to_proto(model).SerializeToString()
        context.reference_folder = folder
    if options.calibration is not None:
        data = load_calibration(options.calibration, model)
        context.calibration, context.held_out = data.split()
    return context


#: numpy's generators take seeds in [0, 2**32).
_SEEDS = range(2**32)


def check_before_work(model: ir.Model, options: CompileOptions) -> None:
    """Refuse the options the passes would otherwise find wrong only deep into the work: the seed,
    the budgets' amounts, the ``shapes`` entries and the measuring time."""
    if isinstance(options.seed, bool) or options.seed not in _SEEDS:
        raise PassInputError(
            f"{options.seed!r}: a seed is a whole number from 0 to 2**32 - 1", field="seed"
        )
    for objective, text in options.constraints().items():
        resolve_budget(objective, text, reference=1.0)
    if not options.measure_seconds > 0:
        raise PassInputError(
            f"{options.measure_seconds!r}: time each model for a positive number of seconds",
            field="measure_seconds",
        )
    check_shapes(model, options.shapes)
