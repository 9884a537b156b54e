"""``mpqc.compile``: the whole compiler behind one call.

It builds the compilation's context from the options (``mpqc.options``), runs the pipeline —
``default{...}``, which ``passes/pipelines.py`` expands, or the caller's own — on a copy of the
caller's model, and returns a ``CompileResult`` whose ``.model`` has the caller's kind. The command
line is a thin layer over this function, so Python users and the ``mpqc`` command get the same
compiler, and ``mpqc-opt -p 'default{...}'`` the same pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import onnx_ir as ir

from mpqc import ir as mir
from mpqc.core.bits import Bits
from mpqc.ir import annotations
from mpqc.ir.outputs import Staging
from mpqc.measure import FloatReference, Measurement, measure
from mpqc.options import CompileOptions, compilation_context
from mpqc.passes import (
    CompileContext,
    PassInputError,
    format_pipeline,
    parse_pipeline,
    resolve_pipeline,
)
from mpqc.passes.choose.plan import check_plan_path
from mpqc.passes.choose.plan_file import describe, yaml_text
from mpqc.passes.choose.plan_ort import overrides_text
from mpqc.passes.infra.instruments import Instrument, Progress, Snapshot, Timing
from mpqc.passes.lib.runnable import check_runnable
from mpqc.passes.lower.lower_qdq import LowerQDQPass
from mpqc.pipeline import Pipeline
from mpqc.report import Explanation

__all__ = ["CompileResult", "compile"]


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """What a compilation produced: the model (caller's kind), its IR, the front and the report."""

    model: Any
    ir_model: ir.Model
    #: The steps that ran, named pipelines expanded.
    pipeline: str
    report: Mapping[str, Any]
    pareto: Mapping[str, Any] | None
    notes: tuple[str, ...]
    timing: tuple[tuple[str, float], ...]
    #: Files written for ``emit_pareto``, one per front point.
    emitted: tuple[pathlib.Path, ...] = ()
    #: Why each layer got its bits (``mpqc.report``): the table behind ``--report``.
    explanation: Explanation | None = None
    #: The emitted model, float and uniform w8a8 timed on this machine (``options.measure``).
    measurement: Measurement | None = None


def compile(
    model: Any, options: CompileOptions | None = None, *, staging: Staging | None = None
) -> CompileResult:
    """Quantize ``model`` (a path, ``onnx.ModelProto``, ``onnx_ir.Model`` or graphsurgeon graph)
    as ``options`` say (``mpqc.CompileOptions``; defaults: the generic chip, no data, no budget).

    The files ``options`` ask for (``plan_out``, ``emit_pareto``) are written as one commit once
    the work is done (``mpqc.ir.outputs``), or staged in ``staging``, the caller's commit, which
    then holds the caller's own files too.
    """
    options = options if options is not None else CompileOptions()
    outputs = staging.outputs if staging is not None else mir.Outputs()
    if staging is None:  # else the caller claimed them with its own outputs
        if options.emit_pareto is not None:
            outputs.claim_folder(options.emit_pareto, "emit_pareto")
        if options.plan_out is not None:
            outputs.claim(options.plan_out, "plan_out")
    if options.plan_out is not None:
        check_plan_path(options.plan_out, field="plan_out")
    working = mir.load(model)
    check_runnable(working, str(model) if isinstance(model, (str, pathlib.Path)) else "the model")
    for data in working.meta.get(mir.io.EXTERNAL_FILES, ()):
        outputs.protect(data, "the input model's external data")
    if working is model:
        working = working.clone()
    context = compilation_context(working, options)
    if options.calibration is None:
        context.note(
            "no calibration data: activations stay float and only data-free analysis runs "
            "(give --calib DIR)"
        )
    timing = Timing()
    watching: list[Instrument] = [timing, *options.instruments]
    snapshot = None
    if options.emit_pareto is not None:
        # keep the analysed model only when the front is to be lowered: cloning is not free
        snapshot = Snapshot(after="search")
        watching.append(snapshot)
    lowering = None
    if options.plan_out is not None:
        lowering = Snapshot(before="lower-qdq")
        watching.append(lowering)
    text = Pipeline(options.pipeline_text(), context).expanded()
    # measuring is one step more, watched like the passes (progress, timing)
    measuring: list[Instrument] = [timing]
    if options.progress:
        progress = Progress(len(parse_pipeline(text)) + options.measure)
        context.progress = progress
        watching.append(progress)
        measuring.append(progress)
    reference = None
    if options.measure:
        reference = FloatReference(text, working)
        watching.append(reference)
    pipeline = Pipeline(text, context, watching, verify_each=options.verify_each)
    result_ir = pipeline.run_ir(working)
    measurement = None
    if reference is not None:
        measurement = measure(
            reference, result_ir, context, text, options.measure_seconds, measuring
        )
    if lowering is not None and lowering.model is None:
        raise PassInputError("needs a pipeline that lowers (lower-qdq)", field="plan_out")
    if snapshot is not None and snapshot.model is None:
        raise PassInputError(
            "needs a search: drop uniform or use a pipeline with the search pass",
            field="emit_pareto",
        )
    emitted: tuple[pathlib.Path, ...] = ()
    with contextlib.nullcontext(staging) if staging is not None else outputs.commit() as files:
        if lowering is not None:
            plan_out = pathlib.Path(options.plan_out)  # type: ignore[arg-type]
            files.text(plan_text(lowering.model, text, context, plan_out), plan_out)
        if snapshot is not None:
            folder = pathlib.Path(options.emit_pareto)  # type: ignore[arg-type]
            emitted = emit_front(
                snapshot.model, context, folder, after_search(text), files, options.verify_each
            )
    report = annotations.REPORT.get(result_ir, {}) or {}
    return CompileResult(
        model=mir.as_kind(result_ir, model),
        ir_model=result_ir,
        pipeline=text,
        report=report,
        pareto=annotations.PARETO.get(result_ir),
        notes=tuple(context.notes),
        timing=tuple(timing.seconds),
        emitted=emitted,
        explanation=Explanation.of(result_ir, report),
        measurement=measurement,
    )


def plan_text(model: ir.Model, pipeline: str, context: CompileContext, path: pathlib.Path) -> str:
    """The plan ``lower-qdq`` carried out on ``model`` (as it was given to it), in the layout of
    the pipeline's lower-qdq step: mpqc's YAML, or onnxruntime's overrides for a .json ``path``."""
    step = next(options for cls, options in resolve_pipeline(pipeline) if cls is LowerQDQPass)
    uniform = Bits.parse(step.uniform) if step.uniform else None
    plan = describe(model, step.layout, context.hw, step.act_signed, uniform)
    if path.suffix.lower() == ".json":
        return overrides_text(plan, model, path)
    return yaml_text(plan)


def after_search(pipeline: str) -> str:
    """The steps of ``pipeline`` that follow its search: what turns a chosen point into a model."""
    steps = parse_pipeline(pipeline)
    last = max(index for index, step in enumerate(steps) if step.name == "search")
    return format_pipeline(steps[last + 1 :])


def emit_front(
    analysed: ir.Model,
    context: CompileContext,
    folder: pathlib.Path,
    tail: str,
    staging: Staging,
    verify_each: bool,
) -> tuple[pathlib.Path, ...]:
    """Lower and verify every point of ``analysed``'s front, staged for ``folder``:
    ``NN_<bytes>B.onnx``.

    Each point starts from the model as the search left it and runs ``tail`` — the compilation's
    own steps after its search (recover and lower-qdq with their layout options, verify) — so each
    file is exactly what the pipeline would have emitted had that point been chosen, checked after
    each of those steps too when the compilation was (``verify_each``).
    """
    front = annotations.PARETO.get(analysed) or {}
    # each point's notes repeat the compilation's own (recovered layers, narrowed grids)
    lower = Pipeline(tail, dataclasses.replace(context, notes=[]), verify_each=verify_each)
    paths = []
    for index, point in enumerate(front.get("points", [])):
        model = analysed.clone()
        for layer in mir.quantizable_layers(model.graph):
            if layer.name in point["bits"]:
                bits = Bits.parse(point["bits"][layer.name])
                annotations.BITS.set(layer.node, annotations.layer_bits(bits))
        lower.run_ir(model)
        size = int(point["objectives"].get("size", 0))
        path = folder / f"{index:02d}_{size}B.onnx"
        staging.model(model, path)
        paths.append(path)
    return tuple(paths)
