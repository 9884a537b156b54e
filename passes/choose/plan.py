"""``plan{file=plan.yaml}``: take every layer's bits from a plan file instead of a search.

A plan is what ``mpqc --plan-out`` wrote — mpqc's own YAML (``plan_file.py``) or onnxruntime's
quantizer overrides (``plan_ort.py``, by the ``.json`` extension) — perhaps edited by hand. The
pass writes ``mpqc.bits`` on every layer from it, so ``lower-qdq`` lowers exactly that plan; it
stands where ``search`` would (``default{plan=...}`` runs canonicalize, calibrate, plan, recover,
lower-qdq, verify). The plan's layout (``weight_only``, ``block_size``) is lower-qdq's to apply:
the default pipeline reads it from the file; a hand-written pipeline gives it to lower-qdq.

Everything a user can get wrong in an edit is one line naming the file and the layer: a layer
the model does not have, a layer the plan lost, bits the chip does not run.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections import Counter

import onnx_ir as ir

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.ir import annotations, quantizable_layers
from mpqc.passes.choose.plan_file import (
    FLOAT_TEXT,
    PlanError,
    range_estimator,
    range_estimators,
    read_yaml,
)
from mpqc.passes.choose.plan_ort import from_overrides, overrides_layout
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.layout import WeightLayout

__all__ = ["PlanPass", "check_plan_path", "plan_layout", "read_plan"]

#: Plan formats by file extension.
YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)


def check_plan_path(path: str | pathlib.Path, field: str = "plan") -> None:
    """A plan file's format comes from its extension: refuse others before any work."""
    if pathlib.Path(path).suffix.lower() not in YAML_SUFFIXES + JSON_SUFFIXES:
        raise PassInputError(
            f"{path}: name a .yaml plan or onnxruntime's overrides as .json", field=field
        )


def plan_layout(path: str | pathlib.Path) -> WeightLayout:
    """The weight layout the plan at ``path`` is lowered with (what lower-qdq is told)."""
    check_plan_path(path)
    if pathlib.Path(path).suffix.lower() in JSON_SUFFIXES:
        return overrides_layout(path)
    return read_yaml(path)[0]


def read_plan(path: str | pathlib.Path, model: ir.Model) -> tuple[WeightLayout, dict[str, Bits]]:
    """The layout and per-layer bits the plan at ``path`` gives ``model``'s layers, every layer
    named and every name a layer."""
    check_plan_path(path)
    if pathlib.Path(path).suffix.lower() in JSON_SUFFIXES:
        return from_overrides(path, model)
    layout, bits = read_yaml(path)
    names = [layer.name for layer in quantizable_layers(model.graph)]
    for name in bits:
        if name not in names:
            raise PlanError.unknown(path, "layer", name, names)
    for name in names:
        if name not in bits:
            raise PlanError(
                path, f"no line for layer '{name}' (write its bits, or {FLOAT_TEXT} to keep it)"
            )
    return layout, bits


@register
class PlanPass(Pass):
    """Every layer's bits from a plan file (mpqc's .yaml or onnxruntime's overrides .json)."""

    name = "plan"
    #: To say when this run's ranges come from other estimators than the plan's.
    may_read = frozenset({annotations.CALIB_RANGE})
    writes = frozenset({annotations.BITS})
    preserves = frozenset({annotations.ALL})

    @dataclasses.dataclass(frozen=True)
    class Options:
        file: str = option("", "the plan: mpqc's .yaml, or onnxruntime's overrides .json")

        def __post_init__(self) -> None:
            if not self.file:
                raise PassInputError("names the plan file: plan{file=plan.yaml}", field="file")
            check_plan_path(self.file, field="file")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _, plan = read_plan(self.options.file, model)
        spec = self.context.hw
        for layer in quantizable_layers(model.graph):
            bits = plan[layer.name]
            if spec is not None:
                _check_runs(self.options.file, layer.name, bits, spec)
            annotations.BITS.set(layer.node, annotations.layer_bits(bits))
        if pathlib.Path(self.options.file).suffix.lower() not in JSON_SUFFIXES:
            self._compare_ranges(model)
        return ir.passes.PassResult(model, modified=True)

    def _compare_ranges(self, model: ir.Model) -> None:
        """A note when the ranges this run calibrated come from other estimators than the plan
        says its model's did (``--calib-method``, or its ``auto`` choice per tensor)."""
        planned = range_estimators(self.options.file)
        differ = Counter()
        for layer in quantizable_layers(model.graph):
            calibrated = range_estimator(layer)
            if layer.name in planned and calibrated not in (None, planned[layer.name]):
                differ[(planned[layer.name], calibrated)] += 1
        if differ:
            pairs = ", ".join(
                f"{count} from {plan} in the plan, {here} here"
                for (plan, here), count in sorted(differ.items())
            )
            self.context.note(
                f"plan: {sum(differ.values())} layer(s) read input ranges from other estimators "
                f"than the plan's ({pairs}): calibrate as the plan's run did (--calib-method) to "
                "lower the model it describes"
            )


def _check_runs(path: str, layer: str, bits: Bits, spec: object) -> None:
    name = spec.name  # type: ignore[attr-defined]
    if bits.dynamic and not bits.float_weights and not spec.supports(*bits):  # type: ignore[attr-defined]
        raise PlanError(path, f"layer '{layer}': {name} has no dynamic-range kernel for {bits}")
    for kind, width, supported in (
        ("weight", bits.w, spec.weight_bits),  # type: ignore[attr-defined]
        ("activation", bits.a, spec.act_bits),  # type: ignore[attr-defined]
    ):
        if width != FLOAT_BITS and width not in supported:
            raise PlanError(
                path,
                f"layer '{layer}': {bits} needs {width}-bit {kind}s, which "
                f"{spec.name} does not run (it runs " + ", ".join(map(str, supported)) + ")",  # type: ignore[attr-defined]
            )
