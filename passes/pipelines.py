"""The pipeline ``mpqc`` runs, by name: ``default{...}`` (DESIGN.md, "The default pipeline").

Every choice the command makes about *which passes run* lives here, not in the front: the
sensitivity metric a strategy reads, whether the layers are recovered before lowering, the
candidate bits when the user names none, and which options cannot go together. ``mpqc`` builds
``default{...}`` from its flags and ``mpqc-opt -p 'default{...}'`` runs the very same steps, so
the two commands write the same file.

With ``uniform`` bits there is nothing to search. Otherwise the layers are scored — by their effect
on the output when there is calibration data, by their weights' quantization error when there is
not — priced on the chip, searched, and lowered. ``recover`` reconstructs the layers below 8-bit
weights (GPTQ and bias correction) just before lowering. ``weight_only`` and ``block_size`` are
lower-qdq's weight layout (``passes/lib/layout.py``), which the cost pass prices too.
"""

from __future__ import annotations

import dataclasses
import typing

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.core.errors import MpqcError
from mpqc.passes.analysis.calibrate import Method
from mpqc.passes.choose.plan import plan_layout
from mpqc.passes.infra.base import PassInputError, option
from mpqc.passes.infra.context import CompileContext
from mpqc.passes.infra.named import NamedPipeline
from mpqc.passes.infra.registry import register

__all__ = ["DefaultPipeline", "default_candidates", "search_step"]

#: Strategies whose method names its own damage score (METHODS.md §4: EAGL ranks layers by entropy).
_METRIC = {"eagl": "entropy"}
#: ... and those whose score needs calibration data (§3: OMPQ compares the layers' features).
_METRIC_WITH_DATA = {"ompq": "orthogonality"}

#: Weight bits ``weight_only`` stores when ``uniform`` does not say.
_WEIGHT_ONLY_BITS = 4


def default_candidates(
    spec: typing.Any, constraints: typing.Collection[str] = ()
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """METHODS.md §8: weights {4, 8} (+2 where the chip runs 2-bit natively, or, stored and
    computed wider, when ``constraints`` include a size budget), activations 8.

    Pareto-optimal quantized networks are mostly 4-bit; under post-training quantization 4-bit
    activations are much harder, so w4a8 is the expected bulk and w8a8 the safe anchor. A size
    budget far below 8 bits (0.15x of float) is out of reach with {4, 8} on models whose biggest
    layers are sensitive; 2-bit weights that save bytes only are then worth offering (the latency
    limit still decides whether they may be slower).
    """
    wbits = [b for b in (8, 4) if b in spec.weight_bits]
    if 2 in spec.weight_bits and spec.supports(2, 8):
        if spec.precision(2, 8).native or "size" in constraints:
            wbits.append(2)
    abits = [b for b in (8,) if b in spec.act_bits] or [max(spec.act_bits)]
    return tuple(wbits or spec.weight_bits), tuple(abits)


def search_step(strategy: str, metric: str, recover: bool, *extra: str) -> str:
    """The ``search`` step of a pipeline that does (or does not) ``recover`` before lowering.

    MOHAQ's beacons score configurations on *recovered* weights; a model lowered without
    ``recover`` must be chosen on plain errors, or the search ships a point whose estimate it never
    had (a beacon-ranked point lowered plainly, bench/RESULTS.md §2). So without recovery a mohaq
    search creates no beacons.
    """
    options = [
        f"strategy={strategy}",
        f"metric={metric}",
        *(["beacons=0"] if strategy == "mohaq" and not recover else []),
        *extra,
    ]
    return "search{" + ",".join(options) + "}"


@register
class DefaultPipeline(NamedPipeline):
    """The pipeline mpqc runs: calibrate, score, price, search, recover, lower, verify."""

    name = "default"

    @dataclasses.dataclass(frozen=True)
    class Options:
        uniform: str = option("", "one choice for every layer, e.g. w8a8 (empty: search per layer)")
        weight_only: bool = option(
            False,
            "float activations, weights at uniform's width (default 4); MatMuls as MatMulNBits",
        )
        block_size: int = option(
            0, "quantize MatMul/Gemm weights per block of this many K values (0: per channel)"
        )
        calibrate_method: Method = option("minmax", "activation range estimator of calibrate")
        strategy: str = option("ilp", "search strategy (no effect with uniform)")
        plan: str = option(
            "",
            "lower this plan file instead of searching (mpqc's .yaml or onnxruntime's "
            "overrides .json; its layout replaces weight_only and block_size)",
        )
        recover: bool | None = option(
            None,
            "GPTQ rounding and bias correction before lowering "
            "(none: on with calibration data when a layer may get fewer than 8 weight bits)",
        )

        def __post_init__(self) -> None:
            if self.uniform:
                try:
                    Bits.parse(self.uniform)
                except MpqcError as exc:
                    raise PassInputError(exc.message, field="uniform") from None

        def bits(self) -> Bits | None:
            """The uniform choice, weight-only's float activations included (None: search)."""
            if self.weight_only:
                wbits = Bits.parse(self.uniform).w if self.uniform else _WEIGHT_ONLY_BITS
                return Bits(wbits, FLOAT_BITS)
            return Bits.parse(self.uniform) if self.uniform else None

    @classmethod
    def expand(cls, options: Options, context: CompileContext) -> str:
        if options.plan:
            return _from_plan(options, context)
        bits = options.bits()
        _check(options, bits, context)
        recover = options.recover
        if recover is None:  # on with data, unless every weight is 8 bits or more (nothing to do)
            recover = context.calibration is not None and (bits is None or bits.w < 8)
        calibrated = context.calibration is not None and not options.weight_only
        layout = [
            *(["weight_only=true"] if options.weight_only else []),
            *([f"block_size={options.block_size}"] if options.block_size else []),
        ]
        lower = ",".join([*([f"uniform={bits}"] if bits else []), *layout])
        lower_step = f"lower-qdq{{{lower}}}" if lower else "lower-qdq"
        # recover rounds on the layout lower-qdq uses
        recover_steps = [f"recover{{{lower}}}" if lower else "recover"] * recover
        steps = ["canonicalize"]
        if calibrated:
            method = options.calibrate_method
            steps.append("calibrate" if method == "minmax" else f"calibrate{{method={method}}}")
        if bits:
            steps += [*recover_steps, lower_step]
        else:
            metric = _METRIC.get(options.strategy) or (
                _METRIC_WITH_DATA.get(options.strategy, "output") if calibrated else "weight-error"
            )
            cost_step = f"cost{{block_size={options.block_size}}}" if options.block_size else "cost"
            # Priced first, so that the measured score skips what the ILP cannot choose under the
            # budgets (passes/choose/choosable.py).
            prune = metric == "output" and options.strategy == "ilp"
            steps += [
                cost_step,
                f"sensitivity-{metric}" + ("{prune=true}" if prune else ""),
                search_step(options.strategy, metric, recover),
                *recover_steps,
                lower_step,
            ]
        steps.append("verify")
        return ",".join(steps)


def _from_plan(options: DefaultPipeline.Options, context: CompileContext) -> str:
    """Lower exactly the plan file: the search's place taken by the ``plan`` pass, the rest as
    after a search (recovery on with data), the layout the plan's own."""
    given = {
        "uniform": bool(options.uniform),
        "strategy": options.strategy != "ilp",
        "weight_only": options.weight_only,
        "block_size": bool(options.block_size),
    }
    for field, conflicting in given.items():
        if conflicting:
            raise PassInputError(
                "the plan file says every layer's bits and layout: drop this option",
                field=field,
            )
    if context.constraints:
        raise PassInputError("fixes every layer's bits, so budgets cannot apply", field="plan")
    if options.recover and context.calibration is None:
        raise PassInputError(
            "needs calibration data to observe each layer's inputs", field="recover"
        )
    layout = plan_layout(options.plan)
    recover = context.calibration is not None if options.recover is None else options.recover
    lower = ",".join(
        [
            *(["weight_only=true"] if layout.weight_only else []),
            *([f"block_size={layout.block_size}"] if layout.block_size else []),
        ]
    )
    steps = ["canonicalize"]
    if context.calibration is not None and not layout.weight_only:
        method = options.calibrate_method
        steps.append("calibrate" if method == "minmax" else f"calibrate{{method={method}}}")
    steps.append(f"plan{{file={options.plan}}}")
    steps += [f"recover{{{lower}}}" if lower else "recover"] * recover
    steps += [f"lower-qdq{{{lower}}}" if lower else "lower-qdq", "verify"]
    return ",".join(steps)


def _check(options: DefaultPipeline.Options, bits: Bits | None, context: CompileContext) -> None:
    """Refuse what cannot go together before anything runs, naming the option at fault."""
    if options.weight_only and context.constraints:
        raise PassInputError(
            "quantizes every weight at one width (no spec prices float-activation pairs to "
            "search): drop the budgets",
            field="weight_only",
        )
    if bits and context.constraints:
        raise PassInputError(
            "fixes every layer's bits, so budgets cannot apply: drop one of them", field="uniform"
        )
    if options.recover and context.calibration is None:
        raise PassInputError(
            "needs calibration data to observe each layer's inputs", field="recover"
        )
    spec = context.hw
    if bits and spec is not None:
        for kind, width, supported in (
            ("weights", bits.w, spec.weight_bits),
            ("activations", bits.a, spec.act_bits),
        ):
            if width != FLOAT_BITS and width not in supported:
                raise PassInputError(
                    f"{spec.name} does not run {width}-bit {kind}: it supports "
                    + ", ".join(map(str, supported)),
                    field="uniform",
                )
