"""``mpqc.Pipeline``: a pipeline string bound to a context, runnable on any kind of model.

Like onnxscript's rewriter entry points, ``run`` accepts a path, an ``onnx.ModelProto``, an
``onnx_ir.Model`` or an ``onnx_graphsurgeon.Graph`` and returns the same kind (a path gives an
``onnx_ir.Model``). The caller's object is never changed: an ``onnx_ir.Model`` is cloned first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from mpqc import ir as mir
from mpqc.passes import (
    CompileContext,
    PassManager,
    build_pipeline,
    expand_pipeline,
    format_pipeline,
    resolve_pipeline,
)
from mpqc.passes.infra.instruments import VERIFY_EACH, Instrument, VerifyEach

__all__ = ["Pipeline"]


class Pipeline:
    def __init__(
        self,
        text: str,
        context: CompileContext | None = None,
        instruments: Sequence[Instrument] = (),
        verify_each: bool = False,
    ) -> None:
        self.steps = resolve_pipeline(text)  # unknown passes and bad options fail here
        self.context = context if context is not None else CompileContext()
        self.instruments = list(instruments)
        #: Check the model after every pass (``VerifyEach``); ``MPQC_VERIFY_EACH=1`` turns it on
        #: for every pipeline, as the test suite does.
        self.verify_each = verify_each or os.environ.get(VERIFY_EACH) == "1"

    def __str__(self) -> str:
        return format_pipeline(self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def expanded(self) -> str:
        """The steps this pipeline runs in its context, named pipelines (``default{...}``)
        expanded."""
        return expand_pipeline(self.steps, self.context)

    def run_ir(self, model: ir.Model) -> ir.Model:
        """Run on an ``onnx_ir.Model`` in place and return it."""
        verifier = [VerifyEach()] if self.verify_each else []
        manager = PassManager(
            build_pipeline(self.steps, self.context), [*self.instruments, *verifier]
        )
        return manager(model).model

    def run(self, model: Any) -> Any:
        """Run on a copy of ``model`` and return the result in the caller's kind."""
        working = mir.load(model)
        if working is model:
            working = working.clone()
        return mir.as_kind(self.run_ir(working), model)
