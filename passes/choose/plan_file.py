"""The plan file: every layer's chosen bits and how they are lowered, one layer per line.

``mpqc --plan-out plan.yaml`` writes it, the user edits it, and ``mpqc --plan plan.yaml`` (the
``plan`` pass) lowers exactly what it says, without a search. It is YAML so that it diffs line by
line and reads back with any YAML library::

    layout: {weight_only: false, block_size: 0}
    layers:
      "conv1": {bits: w8a8, weight: int8 per-channel, activation: uint8 static}
      "fc": {bits: w4a8, weight: int4 per-channel, activation: uint8 static}

Only ``bits`` (``wXaY``, or ``float``) and the ``layout`` line are read: ``weight`` and
``activation`` say what lower-qdq emits for those bits under that layout, so a reader sees the
layout without running anything, and an edited ``bits`` changes them on the next ``--plan-out``.
A plan names every layer, so a line that went missing is an error, not a silently float layer.
The same plan also converts to onnxruntime's quantizer options (``plan_ort.py``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import onnx_ir as ir
import yaml

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.core.errors import MpqcError
from mpqc.ir import annotations, quantizable_layers
from mpqc.ir.layers import Layer
from mpqc.passes.infra.base import PassInputError
from mpqc.passes.lib.layout import WeightLayout
from mpqc.passes.lib.target import weight_grid_bits

__all__ = ["PlanEntry", "PlanError", "PlanFile", "bits_text", "describe", "read_yaml", "write_yaml"]

#: How a float choice is written (``w32a32`` would be correct but unreadable).
FLOAT_TEXT = "float"

_HEADER = """\
# mpqc plan: the bits of every layer, one layer per line.
# Edit a layer's bits (wXaY, or float) and lower exactly this plan with
#   mpqc MODEL --hw SPEC -o OUT.onnx --plan THIS_FILE
# Only `bits` and `layout` are read; `weight` and `activation` say how those bits are lowered.
"""


class PlanError(PassInputError):
    """A plan file that cannot be lowered: unknown layer, a missing one, bits the spec does not
    run, a malformed line."""

    def __init__(self, path: str | pathlib.Path, message: str) -> None:
        super().__init__(f"{path}: {message}", field="plan")


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """One layer's line: its bits and, derived from them, how its weight and input are stored."""

    bits: Bits
    weight: str
    activation: str


@dataclasses.dataclass(frozen=True)
class PlanFile:
    """A whole plan: the lowering's layout and every layer's entry, in graph order."""

    layout: WeightLayout
    layers: Mapping[str, PlanEntry]


def bits_text(bits: Bits) -> str:
    return FLOAT_TEXT if bits == (FLOAT_BITS, FLOAT_BITS) else str(bits)


def describe(
    model: ir.Model, layout: WeightLayout, spec: Any = None, act_signed: bool = False
) -> PlanFile:
    """The plan of ``model`` as lower-qdq is about to see it: each layer's ``mpqc.bits`` (float
    where it has none) and the weight form and activation quantizer those bits lower to."""
    entries = {}
    for layer in quantizable_layers(model.graph):
        chosen = annotations.BITS.get(layer.node)
        bits = Bits(int(chosen["w"]), int(chosen["a"])) if chosen else Bits(FLOAT_BITS, FLOAT_BITS)
        if layout.weight_only:
            bits = Bits(bits.w, FLOAT_BITS)
        entries[layer.name] = PlanEntry(
            bits, _weight_form(layer, bits, layout, spec), _activation_form(layer, bits, act_signed)
        )
    return PlanFile(layout, entries)


def _weight_form(layer: Layer, bits: Bits, layout: WeightLayout, spec: Any) -> str:
    if bits.float_weights:
        return "float"
    grid = weight_grid_bits(spec, bits.w, bits.a)
    narrowed = f", {grid}-bit grid" if grid != bits.w else ""
    if layout.matmul_nbits(layer, grid, bits.a):
        return f"MatMulNBits {grid}-bit block {layout.nbits_block}"
    if layout.gather_blocked(layer, grid):
        return f"GatherBlockQuantized int{grid} block {layout.nbits_block}"
    block = layout.block(layer, grid, bits.a)
    return f"int{bits.w} " + (f"per-block {block}" if block else "per-channel") + narrowed


def _activation_form(layer: Layer, bits: Bits, signed: bool) -> str:
    value = layer.activation
    if bits.float_activations or value is None:
        return "float"
    if not annotations.CALIB_RANGE.has(value):
        return "float (no calibrated range)"
    return f"{'int' if signed else 'uint'}{bits.a} static"


def write_yaml(plan: PlanFile, path: str | pathlib.Path) -> pathlib.Path:
    """One line per layer, names quoted (JSON strings are YAML strings), in graph order."""
    lines = [
        _HEADER.rstrip("\n"),
        f"layout: {{weight_only: {str(plan.layout.weight_only).lower()}, "
        f"block_size: {plan.layout.block_size}}}",
        "layers:",
    ]
    for name, entry in plan.layers.items():
        lines.append(
            f"  {json.dumps(name)}: {{bits: {bits_text(entry.bits)}, "
            f"weight: {entry.weight}, activation: {entry.activation}}}"
        )
    path = pathlib.Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


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
