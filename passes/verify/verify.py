"""``verify``: check that what mpqc emits is a valid model that runs and stays close to float.

It is the last pass of every pipeline because a quantizer's output is only worth its file if a
runtime loads it: full ``onnx.checker``, an onnxruntime CPU session, what onnxruntime really runs
for each quantized layer once it has fused the Q/DQ patterns (``kernels.py``: integer kernel, or
DequantizeLinear + float, against the kernel the plan predicted, with warnings), and then the
numbers — output SQNR and top-1 agreement against the float reference on held-out samples (never
the samples the ranges were fitted to), the task metric when the user gave one, and the serialized
size. Results go to the ``mpqc.report`` annotation for the report and the command's summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from mpqc.ir import annotations, io
from mpqc.passes.infra.base import Pass, PassInputError, option
from mpqc.passes.infra.registry import register
from mpqc.passes.lib.fusion import OptimizedGraph, optimized_graph
from mpqc.passes.lib.runtime import external_folder, session, session_options
from mpqc.passes.verify.kernels import kernel_report, quantized_layers

__all__ = ["VerifyPass", "output_fidelity", "reference_outputs"]


def _squeeze_trailing(array: np.ndarray) -> np.ndarray:
    """Drop trailing size-1 axes, so classes laid out as (N, C, 1, 1) are compared over C."""
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def reference_outputs(reference: ort.InferenceSession, samples: list) -> list[np.ndarray] | None:
    """The float model's first output on each sample; None when it is not numbers (strings, a
    sequence)."""
    firsts = []
    for sample in samples:
        first = np.asarray(reference.run(None, dict(sample))[0])
        if not np.issubdtype(first.dtype, np.number):
            return None
        firsts.append(first)
    return firsts


def output_fidelity(
    firsts: list[np.ndarray],
    candidate: ort.InferenceSession,
    samples: list,
    advance: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """SQNR (dB) of the first output over all samples against the float model's (``firsts``), and
    top-1 agreement when it has classes."""
    signal = noise = 0.0
    agree = total = 0
    for first, sample in zip(firsts, samples, strict=True):
        ref = _squeeze_trailing(first.astype(np.float64))
        out = _squeeze_trailing(np.asarray(candidate.run(None, dict(sample))[0], dtype=np.float64))
        signal += float((ref**2).sum())
        noise += float(((ref - out) ** 2).sum())
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
        if advance is not None:
            advance(1)
            total += int(np.prod(ref.shape[:-1]))
    result = {"sqnr_db": float(10 * np.log10(signal / noise)) if noise > 0 else float("inf")}
    if total:
        result["top1_agreement"] = agree / total
    return result


@register
class VerifyPass(Pass):
    name = "verify"
    may_read = frozenset({annotations.BITS})
    writes = frozenset({annotations.REPORT})
    preserves = frozenset({annotations.ALL})

    @dataclasses.dataclass(frozen=True)
    class Options:
        min_sqnr_db: float = option(
            float("-inf"), "fail if the output SQNR against float is below this"
        )
        max_samples: int = option(64, "held-out samples used for the output comparison")

    def _reference_outputs(self, samples: list) -> list[np.ndarray] | None:
        """The first output of onnxruntime on the float model as given, per sample; None when
        it is not numbers, or, noted, when onnxruntime cannot run the model (an opset older than
        its kernels, which only the compiled copy was upgraded from).

        A model that stays on disk (``mpqc.ir.io.load``) is big: its weights are read where they
        lie, not packed into a copy of each (as much memory again, which a few runs do not
        repay), and the session is gone before the emitted model's are made."""
        if self.context.reference is None or not samples:
            return None
        options = session_options(optimize=True)
        if self.context.reference_folder is not None:
            options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            reference = session(
                self.context.reference, options=options, folder=self.context.reference_folder
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            self.context.note(
                "verify: onnxruntime cannot run the float model as given "
                f"({str(exc).splitlines()[0]}), so fidelity is not measured"
            )
            return None
        return reference_outputs(reference, samples)

    def _kernels(self, model: ir.Model, serialized: bytes) -> dict[str, object]:
        """What onnxruntime runs per quantized layer (``kernels.py``); empty when no layer is
        quantized, or, noted, when onnxruntime cannot save its optimized graph."""
        layers = quantized_layers(model)
        if not layers:
            return {}
        try:
            optimized = OptimizedGraph(optimized_graph(serialized))
        except Exception as exc:  # onnxruntime raises several unrelated types
            self.context.note(
                "verify: onnxruntime's optimized graph could not be read "
                f"({str(exc).splitlines()[0]}), so its kernels are not reported"
            )
            return {}
        lowered = annotations.REPORT.section(model, "lower-qdq") or {}
        return kernel_report(layers, optimized, lowered.get("kernels", {}), lowered.get("ops", {}))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        held_out = self.context.held_out
        samples = list(held_out)[: self.options.max_samples] if held_out is not None else []
        firsts = self._reference_outputs(samples)
        proto = ir.to_proto(model)
        size = proto.ByteSize()
        fits = size < 2**31
        if fits:
            try:
                io.check(proto)
            except Exception as exc:  # checker and shape-inference errors have several types
                raise PassInputError(
                    f"verify: the emitted model fails onnx.checker: {str(exc).splitlines()[0]}"
                ) from None
        else:
            self.context.note(
                "verify: model over 2 GB, checker and fidelity run on the written file only"
            )
        result: dict[str, object] = {
            "checker": "ok" if fits else "skipped",
            "bytes": size,
        }
        if fits:
            serialized = proto.SerializeToString()  # once: a big model's copies add up
            try:
                candidate = session(serialized, optimize=True, folder=external_folder(model))
            except Exception as exc:
                raise PassInputError(
                    f"verify: onnxruntime cannot load the emitted model: {str(exc).splitlines()[0]}"
                ) from None
            result["runtime"] = "onnxruntime " + ort.__version__
            kernels = self._kernels(model, serialized)
            del serialized
            if kernels:
                result["kernels"] = kernels
            if firsts is not None:
                steps = self.context.steps("samples", len(samples))
                result.update(output_fidelity(firsts, candidate, samples, steps.advance))
                result["samples"] = len(samples)
                if not held_out.held_out:
                    result["samples_from"] = "calibration"
                    self.context.note(
                        "verify: fidelity is measured on the calibration samples, none were held "
                        "out (give 5 or more samples to hold every fifth out)"
                    )
            if self.context.eval_fn is not None:
                result["task_metric"] = self.task_metric(proto, "the quantized model")
                if self.context.reference is not None:
                    result["task_metric_float"] = self.task_metric(
                        onnx.load_from_string(self.context.reference), "the float model"
                    )
        sqnr = result.get("sqnr_db")
        if isinstance(sqnr, float) and sqnr < self.options.min_sqnr_db:
            raise PassInputError(
                f"verify: output SQNR {sqnr:.1f} dB is below the required "
                f"{self.options.min_sqnr_db:.1f} dB"
            )
        self.report(model, result)
        return ir.passes.PassResult(model, modified=False)
