"""MOHAQ's beacons made of recovery: a configuration's recovered weights, evaluated under other
configurations.

``mpqc.search.mohaq`` asks, for a few configurations, for "the expensive recovery run once" and then
scores nearby configurations on the recovered weights (METHODS.md §5). ``BeaconRecovery`` is that
recovery, kept cheap enough to run inside a search:

- float inputs (``recover{inputs=float}``): the float model's layer statistics do not depend on the
  configuration, so one onnxruntime pass over the samples serves every beacon; a beacon then costs
  GPTQ and bias correction of its low-bit layers (numpy) and one evaluator session;
- the beacon's recovered model is an ordinary float model whose low-bit weights lie on their grid,
  so ``Evaluator`` needs no change: a layer at the beacon's bits gets the recovered weights exactly,
  a layer at other bits gets the recovered weights re-rounded (MOHAQ: "the candidate's bits applied
  to the beacon's weights").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir
from threadpoolctl import threadpool_limits

from mpqc.core.bits import FLOAT_BITS
from mpqc.ir.layers import quantizable_layers
from mpqc.passes.lib.evaluator import Evaluator
from mpqc.passes.lib.layout import PER_CHANNEL, WeightLayout
from mpqc.passes.recover.recover import RecoverPass, recover_layer, targets
from mpqc.passes.recover.statistics import InputStatistics, observe_float

__all__ = ["BeaconRecovery"]


class BeaconRecovery:
    """Recovers configurations of ``model`` into evaluators (see the module docstring)."""

    def __init__(
        self,
        model: ir.Model,
        samples: Sequence[Mapping[str, Any]],
        *,
        wbits: Sequence[int],
        hw: Any = None,
        layout: WeightLayout = PER_CHANNEL,
    ) -> None:
        self.model = model.clone()
        self.samples = list(samples)
        self.wbits = tuple(wbits)
        self.hw = hw
        self.layout = layout
        self.options = RecoverPass.Options(
            inputs="float", weight_only=layout.weight_only, block_size=layout.block_size
        )
        self._statistics: dict[str, InputStatistics] | None = None
        #: Beacons recovered so far (MOHAQ's budget keeps this small).
        self.recovered = 0

    def evaluator(self, config: Mapping[str, tuple[int, int]]) -> Evaluator:
        """An evaluator over ``model`` with ``config``'s layers recovered at their bits."""
        recovered = self.model.clone()
        chosen, _ = targets(recovered, config, self.hw, self.options.max_bits, self.layout)
        with threadpool_limits(1, user_api="blas"):
            statistics = self._observed()
            for target in chosen:
                seen = statistics[target.name]
                recover_layer(recovered.graph, target, seen, seen.mean, self.options)
        self.recovered += 1
        return Evaluator(
            recovered, self.samples, wbits=self.wbits, spec=self.hw, layout=self.layout
        )

    def _observed(self) -> dict[str, InputStatistics]:
        """Float-input statistics of every layer recovery can reconstruct, observed once for all
        beacons."""
        if self._statistics is None:
            every = {layer.name: (2, FLOAT_BITS) for layer in quantizable_layers(self.model.graph)}
            recoverable, _ = targets(self.model, every, None, max_bits=16)
            views = {t.name: t.view for t in recoverable}
            self._statistics = observe_float(
                self.model, views, self.samples, True, self.options.positions
            )
        return self._statistics
