"""The plan file: every layer's chosen bits and how they are lowered, one layer per line.

``mpqc --plan-out plan.yaml`` writes it, the user edits it, and ``mpqc --plan plan.yaml`` (the
``plan`` pass) lowers exactly what it says, without a search. It is YAML so that it diffs line by
line and reads back with any YAML library::

    layout: {weight_only: false, block_size: 0}
    layers:
      "conv1": {bits: w8a8, weight: int8 per-channel, activation: uint8 static, kernel: integer}
      "fc": {bits: w4a8, weight: int4 per-channel, activation: uint8 static,
             kernel: dequantize-float}
      "attn.q": {bits: w8adyn, weight: int8 matmul-integer, activation: uint8 dynamic,
                 kernel: dynamic-integer}

Only ``bits`` (``wXaY``, ``wXadyn`` for a range measured on every run, or ``float``) and the
``layout`` line are read: ``weight``,
``activation`` and ``kernel`` are the lowering plan's (``passes/lib/plan``) for those bits under
that layout — what lower-qdq emits and what onnxruntime then runs — so a reader sees them without
running anything, and an edited ``bits`` changes them on the next ``--plan-out``.
A static input range that another estimator than minmax clipped says which
(``uint8 static (percentile range)``, from ``--calib-method`` or its per-tensor ``auto`` choice):
the ranges come from calibration, not from the plan, so ``--plan`` compares them
(``range_estimators``) and says when this run's differ.
A plan names every layer, so a line that went missing is an error, not a silently float layer.
The same plan also converts to onnxruntime's quantizer options (``plan_ort.py``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import onnx_ir as ir
import yaml

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.core.errors import MpqcError
from mpqc.ir import annotations, quantizable_layers
from mpqc.ir.layers import Layer, near_names
from mpqc.passes.infra.base import PassInputError
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.lib.plan import LayerPlan, WeightForm, layer_plan

__all__ = [
    "PlanEntry",
    "PlanError",
    "PlanFile",
    "bits_text",
    "describe",
    "range_estimator",
    "range_estimators",
    "read_yaml",
    "yaml_text",
]

#: How a float choice is written (``w32a32`` would be correct but unreadable).
FLOAT_TEXT = "float"

_HEADER = """\
# mpqc plan: the bits of every layer, one layer per line.
# Edit a layer's bits (wXaY, or float) and lower exactly this plan with
#   mpqc MODEL --hw SPEC -o OUT.onnx --plan THIS_FILE
# Only `bits` and `layout` are read; the rest says how those bits are lowered and run.
"""


class PlanError(PassInputError):
    """A plan file that cannot be lowered: unknown layer, a missing one, bits the spec does not
    run, a malformed line."""

    def __init__(self, path: str | pathlib.Path, message: str) -> None:
        super().__init__(f"{path}: {message}", field="plan")

    @classmethod
    def unknown(
        cls, path: str | pathlib.Path, kind: str, name: str, known: Iterable[str]
    ) -> PlanError:
        """``name`` is no ``kind`` of the model: the error names the closest ones it has (a layer
        inside an If/Loop/Scan body by its scoped name, ``If_0/then/Conv_3``)."""
        near = near_names(name, known)
        hint = (
            "did you mean " + ", ".join(f"'{n}'" for n in near) + "?"
            if near
            else f"the model has no such {kind}"
        )
        return cls(path, f"unknown {kind} '{name}' ({hint})")


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """One layer's line: its bits and, from the lowering plan, how lower-qdq stores its weight,
    quantizes its input, and which onnxruntime kernel then runs it."""

    bits: Bits
    form: WeightForm
    weight: str
    activation: str
    kernel: str


@dataclasses.dataclass(frozen=True)
class PlanFile:
    """A whole plan: the lowering's layout and every layer's entry, in graph order."""

    layout: WeightLayout
    layers: Mapping[str, PlanEntry]


def bits_text(bits: Bits) -> str:
    return FLOAT_TEXT if bits == (FLOAT_BITS, FLOAT_BITS) else str(bits)


def describe(
    model: ir.Model,
    layout: WeightLayout,
    spec: Any = None,
    act_signed: bool = False,
    uniform: Bits | None = None,
) -> PlanFile:
    """The plan of ``model`` as lower-qdq is about to see it: each layer's bits (``uniform``, else
    its ``mpqc.bits``, else float) and its lowering plan (``passes/lib/plan``) at those bits."""
    entries = {}
    for layer in quantizable_layers(model.graph):
        chosen = annotations.BITS.get(layer.node)
        if uniform is not None:
            bits = uniform
        elif chosen is not None:
            bits = annotations.chosen_bits(chosen)
        else:
            bits = Bits(FLOAT_BITS, FLOAT_BITS)
        lowered = layer_plan(
            layer,
            bits.w,
            bits.a,
            spec=spec,
            layout=layout,
            act_signed=act_signed,
            dynamic=bits.dynamic,
        )
        bits = Bits(bits.w, lowered.abits, lowered.dynamic)
        entries[layer.name] = PlanEntry(
            bits,
            lowered.form,
            _weight_text(lowered),
            _activation_text(layer, lowered),
            lowered.kernel.value,
        )
    return PlanFile(layout, entries)


def _weight_text(lowered: LayerPlan) -> str:
    if lowered.container is None:
        return "float"
    text = f"{lowered.container.name.lower()} {lowered.form.value}"
    if lowered.block:
        text += f" {lowered.block}"
    if lowered.grid_bits != lowered.wbits:
        text += f" ({lowered.grid_bits}-bit grid)"
    return text


def _activation_text(layer: Layer, lowered: LayerPlan) -> str:
    if lowered.form is WeightForm.DYNAMIC_LSTM:  # the kernel quantizes its input on the run
        return "uint8 dynamic"
    if lowered.input_quantizer is None:
        return "float"
    if lowered.dynamic:
        return f"{lowered.input_quantizer.name.lower()} dynamic"
    if layer.activation is None or not annotations.CALIB_RANGE.has(layer.activation):
        return "float (no calibrated range)"
    method = range_estimator(layer)
    clipped = "" if method == DEFAULT_ESTIMATOR else f" ({method} range)"
    return f"{lowered.input_quantizer.name.lower()} static{clipped}"


#: The estimator a plan line leaves unsaid.
DEFAULT_ESTIMATOR = "minmax"
_ESTIMATOR = re.compile(r"static \((\w+) range\)")


def range_estimator(layer: Layer) -> str | None:
    """The estimator that set the calibrated range of ``layer``'s input; None without one."""
    calibrated = None if layer.activation is None else annotations.CALIB_RANGE.get(layer.activation)
    return None if calibrated is None else str(calibrated.get("method", DEFAULT_ESTIMATOR))


def range_estimators(path: str | pathlib.Path) -> dict[str, str]:
    """Per layer whose plan line quantizes its input on a static range, the estimator that range
    came from (minmax where the line names none)."""
    document = yaml.safe_load(pathlib.Path(path).read_text())
    estimators = {}
    for name, entry in document["layers"].items():
        text = str(entry.get("activation", "")) if isinstance(entry, dict) else ""
        if " static" in f" {text}":
            match = _ESTIMATOR.search(text)
            estimators[str(name)] = match.group(1) if match else DEFAULT_ESTIMATOR
    return estimators


def yaml_text(plan: PlanFile) -> str:
    """The plan file: one line per layer, names quoted (JSON strings are YAML strings), in graph
    order."""
    lines = [
        _HEADER.rstrip("\n"),
        f"layout: {{weight_only: {str(plan.layout.weight_only).lower()}, "
        f"block_size: {plan.layout.block_size}}}",
        "layers:",
    ]
    for name, entry in plan.layers.items():
        lines.append(
            f"  {json.dumps(name)}: {{bits: {bits_text(entry.bits)}, "
            f"weight: {entry.weight}, activation: {entry.activation}, kernel: {entry.kernel}}}"
        )
    return "\n".join(lines) + "\n"


def read_yaml(path: str | pathlib.Path) -> tuple[WeightLayout, dict[str, Bits]]:
    """The layout and the bits per layer name a YAML plan gives (not yet checked against a
    model)."""
    try:
        document = yaml.safe_load(pathlib.Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(path, f"cannot read the plan: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict) or not isinstance(document.get("layers"), dict):
        raise PlanError(path, "not an mpqc plan (expected a 'layers:' mapping)")
    layout = document.get("layout") or {}
    try:
        weight_layout = WeightLayout(
            bool(layout.get("weight_only", False)), int(layout.get("block_size", 0))
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise PlanError(path, f"layout: {exc}") from None
    bits = {}
    for name, entry in document["layers"].items():
        text = entry.get("bits") if isinstance(entry, dict) else entry
        bits[str(name)] = parse_bits(path, str(name), str(text))
    return weight_layout, bits


def parse_bits(path: str | pathlib.Path, layer: str, text: str) -> Bits:
    if text.strip().lower() == FLOAT_TEXT:
        return Bits(FLOAT_BITS, FLOAT_BITS)
    try:
        return Bits.parse(text)
    except MpqcError as exc:
        raise PlanError(path, f"layer '{layer}': {exc.message}") from None
