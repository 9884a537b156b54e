"""The pass manager: runs passes in order with instruments around each.

It is itself an onnx_ir in-place pass, so a whole mpqc pipeline nests inside another toolchain's
pass manager as one step.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from mpqc.passes.infra.instruments import Instrument

__all__ = ["PassManager"]


class PassManager(ir.passes.InPlacePass):
    def __init__(
        self, passes: Sequence[ir.passes.PassBase], instruments: Sequence[Instrument] = ()
    ) -> None:
        self.passes = list(passes)
        self.instruments = list(instruments)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for pass_ in self.passes:
            for instrument in self.instruments:
                instrument.run_before_pass(pass_, model)
            result = pass_(model)
            model = result.model
            modified = modified or result.modified
            for instrument in self.instruments:
                instrument.run_after_pass(pass_, model, result)
        return ir.passes.PassResult(model, modified)
