"""What every ``sensitivity-*`` pass shares: candidate bit-widths, the layers, the score format.

Score format (DESIGN.md, "Sensitivity"): each quantizable layer node gets ``mpqc.sens.<metric>``, a
dict from candidate to damage (higher = worse). Weights and activations are scored separately, as
``"w{b}"`` and ``"a{b}"`` (``"adyn"`` for a range measured on every run), because the
one-layer-at-a-time measurements behind them are separate and a search combines them as it needs;
a pass that measures a pair jointly may add ``"w{w}a{a}"``.
Numbers that explain a score (raw entropies, SQNRs, orthogonality weights) go to a side annotation
``mpqc.sensinfo.<metric>`` so the score dict holds only candidates and a search can parse every key.

Candidates: the pass's ``wbits``/``abits`` options, intersected with the user's
``--wbits``/``--abits`` (``context.wbits``/``abits``) and with what the hardware spec runs
(``context.hw``). An option left at its default follows the user's list instead, so ``--wbits 6``
scores 6 bits rather than failing on an empty intersection with the default (2, 3, 4, 8); an option
set in the pipeline string restricts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from mpqc.ir.annotations import ALL, detail_key, sensitivity_key
from mpqc.ir.layers import Layer, quantizable_layers
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.context import Steps
from mpqc.passes.lib.data import CalibrationData
from mpqc.passes.lib.plan import dynamic_form, facts_of

__all__ = ["ActivationCandidates", "SensitivityPass", "WeightCandidates"]


@dataclasses.dataclass(frozen=True)
class WeightCandidates:
    wbits: tuple[int, ...] = option(
        (2, 3, 4, 8), "weight bit-widths to score (intersected with --wbits and the spec)"
    )

    def __post_init__(self) -> None:
        _check_bits("wbits", self.wbits)


@dataclasses.dataclass(frozen=True)
class ActivationCandidates(WeightCandidates):
    abits: tuple[int, ...] = option(
        (4, 8), "activation bit-widths to score (intersected with --abits and the spec)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bits("abits", self.abits)


def _check_bits(name: str, bits: tuple[int, ...]) -> None:
    bad = [b for b in bits if not 2 <= int(b) <= 16]
    if bad:
        raise ValueError(f"{name} must be between 2 and 16, got {bad}")


class SensitivityPass(Pass):
    """Base of the sensitivity passes: an analysis that only adds ``mpqc.sens.<metric>``."""

    #: Counts the layers scored (``layers()`` starts it, ``write()`` advances it).
    _steps: Steps = Steps(None, "layers", None)

    metric: ClassVar[str]
    preserves = frozenset({ALL})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "metric" in cls.__dict__:
            cls.writes = frozenset({sensitivity_key(cls.metric), detail_key(cls.metric)})

    # -- candidates ---------------------------------------------------------------------------

    def weight_bits(self) -> tuple[int, ...]:
        hw = self.context.hw
        return self._candidates(
            "weight", "wbits", self.context.wbits, hw.weight_bits if hw is not None else None
        )

    def activation_bits(self) -> tuple[int, ...]:
        hw = self.context.hw
        return self._candidates(
            "activation", "abits", self.context.abits, hw.act_bits if hw is not None else None
        )

    def dynamic_layers(self, layers: list[Layer]) -> list[Layer]:
        """The layers whose dynamic-range choice (``adyn``) is worth scoring: those with the form
        (``plan.dynamic_form``), on a spec that runs it within the user's bit lists."""
        hw = self.context.hw
        if hw is None or not hw.dynamic_pairs(self.context.wbits, self.context.abits):
            return []
        return [layer for layer in layers if dynamic_form(facts_of(layer))]

    def _candidates(
        self, kind: str, field: str, user: Iterable[int] | None, spec: Iterable[int] | None
    ) -> tuple[int, ...]:
        own = getattr(self.options, field)
        default = next(f.default for f in dataclasses.fields(self.options) if f.name == field)
        if user is not None and own == default:
            own = tuple(user)
        chosen = set(int(b) for b in own)
        for other in (user, spec):
            if other is not None:
                chosen &= {int(b) for b in other}
        if not chosen:
            raise PassInputError(
                f"{self.name}: no {kind} bit-width left to score: the pass's {tuple(own)}, "
                f"the user's {tuple(user or ())} and the spec's {tuple(spec or ())} have none in "
                "common"
            )
        return tuple(sorted(chosen))

    # -- layers and scores --------------------------------------------------------------------

    def calibration(self, model: ir.Model, why: str) -> CalibrationData:
        """The calibration samples, checked against ``model``; a PassInputError saying ``why``
        they are needed."""
        data = self.context.calibration
        if data is None or len(data) == 0:
            raise PassInputError(
                f"{self.name} needs calibration samples {why}", field="calibration"
            )
        data.check(model)
        return data

    def layers(self, model: ir.Model) -> list[Layer]:
        """The quantizable layers; a PassInputError if there are none or a weight is not finite."""
        layers = quantizable_layers(model.graph)
        if not layers:
            raise PassInputError(
                f"{self.name}: the model has no quantizable layer (Conv, ConvTranspose, Gemm, "
                "MatMul, Gather, LSTM or GRU with a constant float weight); nothing to score"
            )
        for layer in layers:
            weight = layer.weight_array()
            if not np.all(np.isfinite(weight)):
                raise PassInputError(
                    f"{self.name}: layer '{layer.name}' has NaN or Inf in its weight "
                    f"'{layer.weight.name}'; fix the model before quantizing it"
                )
        self._steps = self.context.steps("layers", len(layers))
        return layers

    def count_evaluations(self, total: int) -> Steps:
        """For a metric whose work is its evaluations, not its layers: count those instead."""
        self._steps = Steps(None, "layers", None)
        return self.context.steps("evaluations", total)

    def write(
        self, layer: Layer, scores: dict[str, float], detail: dict[str, Any] | None = None
    ) -> None:
        sensitivity_key(self.metric).set(layer.node, {k: float(v) for k, v in scores.items()})
        self._steps.advance()
        if detail is not None:
            detail_key(self.metric).set(layer.node, detail)
