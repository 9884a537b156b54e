"""``mpqc.compile``: the whole compiler behind one call.

It assembles the inputs into a ``CompileContext`` (spec, calibration split into fitting and held-out
samples, the float reference, seed), picks the pipeline, runs it on a copy of the caller's model and
returns a ``CompileResult`` whose ``.model`` has the caller's kind. The command line is a thin layer
over this function, so Python users and the ``mpqc`` command get the same compiler.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

from mpqc import hwspecs
from mpqc import ir as mir
from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.ir import annotations
from mpqc.passes import CompileContext, PassError, format_pipeline, load_calibration, parse_pipeline
from mpqc.passes.infra.instruments import Instrument, Snapshot, Timing
from mpqc.pipeline import Pipeline
from mpqc.report import Explainer, Explanation, explain

__all__ = ["CompileResult", "compile", "default_pipeline"]


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """What a compilation produced: the model (caller's kind), its IR, the front and the report."""

    model: Any
    ir_model: ir.Model
    pipeline: str
    report: Mapping[str, Any]
    pareto: Mapping[str, Any] | None
    notes: tuple[str, ...]
    timing: tuple[tuple[str, float], ...]
    #: Files written for ``emit_pareto``, one per front point.
    emitted: tuple[pathlib.Path, ...] = ()
    #: Why each layer got its bits (``mpqc.report``): the table behind ``--report``.
    explanation: Explanation | None = None


#: Strategies whose method names its own damage score (METHODS.md §4: EAGL ranks layers by entropy).
_METRIC = {"eagl": "entropy"}


def default_pipeline(
    *,
    uniform: str | None,
    calibrated: bool,
    calibrate_method: str = "minmax",
    strategy: str = "ilp",
    recover: bool = False,
    weight_only: bool = False,
    block_size: int = 0,
) -> str:
    """The pipeline ``mpqc`` runs (DESIGN.md, "The default pipeline").

    With ``uniform`` bits there is nothing to search. Otherwise the layers are scored — by their
    effect on the output when there is calibration data, by their weights' quantization error when
    there is not — priced on the chip, searched, and lowered. ``recover`` reconstructs the layers
    below 8-bit weights (GPTQ and bias correction) just before lowering. ``weight_only`` and
    ``block_size`` are lower-qdq's weight layout (``passes/lib/layout.py``), which the cost pass
    prices too.
    """
    layout = [
        *(["weight_only=true"] if weight_only else []),
        *([f"block_size={block_size}"] if block_size else []),
    ]
    lower = ",".join([*([f"uniform={uniform}"] if uniform else []), *layout])
    lower_step = f"lower-qdq{{{lower}}}" if lower else "lower-qdq"
    recover_steps = [
        f"recover{{{lower}}}" if lower else "recover"
    ] * recover  # rounds on the layout lower-qdq uses
    cost_step = f"cost{{block_size={block_size}}}" if block_size else "cost"
    steps = ["canonicalize"]
    if calibrated:
        steps.append(
            "calibrate"
            if calibrate_method == "minmax"
            else f"calibrate{{method={calibrate_method}}}"
        )
    if uniform:
        steps += [*recover_steps, lower_step]
    else:
        metric = _METRIC.get(strategy) or ("output" if calibrated else "weight-error")
        steps += [
            f"sensitivity-{metric}",
            cost_step,
            search_step(strategy, metric, recover),
            *recover_steps,
            lower_step,
        ]
    steps.append("verify")
    return ",".join(steps)


def search_step(strategy: str, metric: str, recover: bool, *extra: str) -> str:
    """The ``search`` step of a pipeline that does (or does not) ``recover`` before lowering.

    MOHAQ's beacons score configurations on *recovered* weights; a model lowered without ``recover``
    must be chosen on plain errors, or the search ships a point whose estimate it never had (on
    PP-OCRv4 a beacon-ranked point lowered plainly read 0 lines of 150). So without recovery a mohaq
    search creates no beacons.
    """
    options = [
        f"strategy={strategy}",
        f"metric={metric}",
        *(["beacons=0"] if strategy == "mohaq" and not recover else []),
        *extra,
    ]
    return "search{" + ",".join(options) + "}"


def default_candidates(spec: hwspecs.HardwareSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """METHODS.md §8: weights {4, 8} (+2 where the chip runs 2-bit natively), activations 8.

    Pareto-optimal quantized networks are mostly 4-bit; under post-training quantization 4-bit
    activations are much harder, so w4a8 is the expected bulk and w8a8 the safe anchor.
    """
    wbits = [b for b in (8, 4) if b in spec.weight_bits]
    if 2 in spec.weight_bits and spec.supports(2, 8) and spec.precision(2, 8).native:
        wbits.append(2)
    abits = [b for b in (8,) if b in spec.act_bits] or [max(spec.act_bits)]
    return tuple(wbits or spec.weight_bits), tuple(abits)


def _check_uniform(uniform: str, spec: hwspecs.HardwareSpec) -> None:
    try:
        wbits, abits = Bits.parse(uniform)
    except ValueError as exc:
        raise PassError(str(exc)) from None
    if wbits != FLOAT_BITS and wbits not in spec.weight_bits:
        raise PassError(
            f"{spec.name} does not run {wbits}-bit weights: it supports {', '.join(map(str, spec.weight_bits))}"
        )
    if abits != FLOAT_BITS and abits not in spec.act_bits:
        raise PassError(
            f"{spec.name} does not run {abits}-bit activations: it supports {', '.join(map(str, spec.act_bits))}"
        )


def compile(
    model: Any,
    *,
    hw: str | hwspecs.HardwareSpec = "generic",
    calibration: Any = None,
    uniform: str | None = None,
    constraints: Mapping[str, str | float] | None = None,
    strategy: str = "ilp",
    wbits: Sequence[int] | None = None,
    abits: Sequence[int] | None = None,
    shapes: Mapping[str, int | tuple[int, ...]] | None = None,
    pipeline: str | None = None,
    calibrate_method: str = "minmax",
    eval_fn: Callable[[Any], float] | None = None,
    seed: int = 0,
    executor: concurrent.futures.Executor | None = None,
    emit_pareto: str | os.PathLike | None = None,
    instruments: Sequence[Instrument] = (),
    recover: bool | None = None,
    weight_only: bool = False,
    block_size: int = 0,
) -> CompileResult:
    """Quantize ``model`` for the chip ``hw``.

    ``calibration`` is a directory of .npz/.npy files, an onnxruntime CalibrationDataReader or an
    iterable of input dicts; every fifth sample is held out for verification. ``uniform`` ("w8a8",
    "w4a8", ...) gives every layer the same bits; otherwise ``strategy`` searches per-layer bits among
    ``wbits`` x ``abits`` under ``constraints`` ({"size": "0.25x", "latency": "2ms", ...}).
    ``pipeline`` replaces the default pipeline. ``executor`` runs exact evaluations (a process pool,
    or a Dask client's ``get_executor()``). ``emit_pareto`` names a folder that receives every point
    of the searched front, lowered and verified like the chosen one. ``recover`` (GPTQ rounding and
    bias correction of the layers below 8-bit weights, bench/RESULTS.md §6) runs by default when
    there is calibration data and a layer may get fewer than 8 weight bits; ``recover=False`` turns
    it off, ``True`` without data is an error.
    ``weight_only`` keeps activations float and quantizes every weight at ``uniform``'s weight bits
    (default 4), MatMuls as onnxruntime's MatMulNBits; ``block_size`` quantizes MatMul/Gemm weights
    per block of that many K values (MatMulNBits' block, 32 when not given).
    """
    spec = hwspecs.load(hw)
    if weight_only:
        if constraints:
            raise PassError(
                "--weight-only quantizes every weight at one width (no spec prices float-activation pairs to search): drop the budgets"
            )
        uniform = str(Bits(Bits.parse(uniform).w if uniform else 4, FLOAT_BITS))
    if uniform and constraints:
        raise PassError(
            "--uniform fixes every layer's bits, so budgets cannot apply: drop one of them"
        )
    default_w, default_a = default_candidates(spec)
    working = mir.load(model)
    if working is model:
        working = working.clone()
    context = CompileContext(
        hw=spec,
        seed=seed,
        eval_fn=eval_fn,
        wbits=tuple(wbits) if wbits else default_w,
        abits=tuple(abits) if abits else default_a,
        constraints=dict(constraints or {}),
        shapes=dict(shapes or {}),
        executor=executor,
    )
    context.reference = (
        ir.to_proto(working).SerializeToString()
        if mir.tensor_bytes(working) < 2**31 - 2**26
        else None
    )
    if calibration is not None:
        data = load_calibration(calibration, working)
        context.calibration, context.held_out = data.split()
    else:
        context.note(
            "no calibration data: activations stay float and only data-free analysis runs (give --calib DIR)"
        )
    if uniform:
        _check_uniform(uniform, spec)
    if recover and calibration is None:
        raise PassError(
            "--recover needs calibration data to observe each layer's inputs: give --calib DIR"
        )
    if (
        recover is None
    ):  # on with data, unless every weight is uniformly 8 bits or more (nothing to recover)
        recover = calibration is not None and (not uniform or Bits.parse(uniform)[0] < 8)
    text = pipeline or default_pipeline(
        uniform=uniform,
        calibrated=calibration is not None and not weight_only,
        calibrate_method=calibrate_method,
        strategy=strategy,
        recover=recover,
        weight_only=weight_only,
        block_size=block_size,
    )
    timing = Timing()
    explainer = Explainer()
    watching: list[Instrument] = [timing, explainer, *instruments]
    snapshot = None
    if (
        emit_pareto is not None
    ):  # keep the analysed model only when the front is to be lowered: cloning is not free
        snapshot = Snapshot(after="search")
        watching.append(snapshot)
    result_ir = Pipeline(text, context, watching).run_ir(working)
    emitted: tuple[pathlib.Path, ...] = ()
    if snapshot is not None:
        if snapshot.model is None:
            raise PassError(
                "--emit-pareto needs a search: drop --uniform or use a pipeline with the search pass"
            )
        emitted = emit_front(snapshot.model, context, pathlib.Path(emit_pareto), after_search(text))
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
        explanation=explain(result_ir, explainer.searched, report),
    )


def after_search(pipeline: str) -> str:
    """The steps of ``pipeline`` that follow its search: what turns a chosen point into a model."""
    steps = parse_pipeline(pipeline)
    last = max(index for index, step in enumerate(steps) if step.name == "search")
    return format_pipeline(steps[last + 1 :])


def emit_front(
    analysed: ir.Model, context: CompileContext, folder: pathlib.Path, tail: str
) -> tuple[pathlib.Path, ...]:
    """Lower and verify every point of ``analysed``'s front into ``folder``: ``NN_w<bits>_<bytes>B.onnx``.

    Each point starts from the model as the search left it and runs ``tail`` — the compilation's own
    steps after its search (recover and lower-qdq with their layout options, verify) — so each file is
    exactly what the pipeline would have emitted had that point been chosen.
    """
    front = annotations.PARETO.get(analysed) or {}
    folder.mkdir(parents=True, exist_ok=True)
    lower = Pipeline(tail, context)
    paths = []
    for index, point in enumerate(front.get("points", [])):
        model = analysed.clone()
        for layer in mir.quantizable_layers(model.graph):
            if layer.name in point["bits"]:
                wbits, abits = Bits.parse(point["bits"][layer.name])
                annotations.BITS.set(layer.node, {"w": wbits, "a": abits})
        lower.run_ir(model)
        size = int(point["objectives"].get("size", 0))
        paths.append(mir.save(model, folder / f"{index:02d}_{size}B.onnx"))
    return tuple(paths)
