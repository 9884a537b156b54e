"""The fuzzer's property: a valid model either compiles to one that passes onnx's checker and runs
in onnxruntime close to float, or is refused with one line.

"Close" is relative to the output's own scale: the relative L2 error ``|q - f| / |f|`` of each
float output over the samples mpqc fitted its ranges to (it holds every fifth out to verify). On
those, the ranges cover every activation, so what remains is rounding, which eight bits keep small;
samples the ranges did not see may clip (eight samples of a [1, 2] input make a narrow range),
which is the data's doing, not mpqc's. The bound is loose enough for the rounding of eight bits
through ten random layers and tight enough that a wrong scale, a dropped bias, a transposed weight
or a quantizer on the wrong tensor exceeds it.

Two kinds of model put the bound out of reach of any quantizer, and there the property asks less:
- an ill-conditioned output — one that cancels (terms of a sum far larger than the sum), a
  LayerNormalization over two values (the sign of their difference) — amplifies the rounding of
  eight bits past any fixed bound; at w8a8 such a model is held to onnxruntime's own
  ``quantize_static`` (QDQ, per channel, MinMax) on the same samples: no more than twice its error
  (which of two roundings is luckier on such an output is chance);
- a layer the search gave 2-bit weights rounds to {-s, 0, s}, which can zero whole rows; such a
  model is held to ``ZERO_OUTPUT``: no worse than an output of zeros (a wrong sign or scale is).

A refusal is an ``MpqcError`` whose message is one line. The fuzzer's models all run in
onnxruntime, so a refusal saying that mpqc's own output does not load or check
(``VerifyEachError`` and verify's own checks) is a bug, not a refusal.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import tempfile

import numpy as np
import onnx
from graph_strategies import FuzzModel
from hypothesis import currently_in_test_context, event, note
from models import run_ort

import mpqc
from mpqc.core import MpqcError
from mpqc.passes import load_calibration
from mpqc.passes.infra.instruments import VerifyEachError

__all__ = ["CALIBRATION_SAMPLES", "compile_or_refuse", "relative_errors"]

#: Calibration samples per model (every fifth is held out by mpqc to verify).
CALIBRATION_SAMPLES = 10

#: The bound for a model with 2-bit weights: the error of an output of zeros.
ZERO_OUTPUT = 1.0
#: How much more error than onnxruntime's quantizer a cancelling model may have at w8a8.
ORT_FACTOR = 2.0

#: Refusals that mean mpqc broke a model it accepted.
_BROKEN = ("cannot load", "fails onnx.checker")


def relative_errors(expected: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> list[float]:
    """Per output, the relative L2 error over all samples (0 where float's output is all zeros
    and so is the quantized one)."""
    errors = []
    for index in range(len(expected[0])):
        want = np.concatenate([np.ravel(outputs[index]) for outputs in expected]).astype(np.float64)
        have = np.concatenate([np.ravel(outputs[index]) for outputs in got]).astype(np.float64)
        scale = np.linalg.norm(want)
        diff = np.linalg.norm(have - want)
        errors.append(float(diff / scale) if scale > 0 else float(diff > 0))
    return errors


def _note(text: str) -> None:
    """Tell hypothesis's report of a failing example (regression tests call outside any)."""
    if currently_in_test_context():
        note(text)


def _event(text: str) -> None:
    """Count an outcome in hypothesis's statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(text)


def compile_or_refuse(model: FuzzModel, options: mpqc.CompileOptions, tolerance: float) -> str:
    """Compile ``model`` with ``options`` and calibration data; assert the property and return
    the outcome ("compiled" or "refused: <error type>")."""
    _note(f"model:\n{model.text()}")
    _note(f"operators:\n{model.summary}")
    calibration = model.samples(CALIBRATION_SAMPLES, seed=1)
    fitted = load_calibration(calibration).split()[0].samples
    # the property is about valid models: this failing is a bug of the generator
    onnx.checker.check_model(model.proto, full_check=True)
    expected = [run_ort(model.proto, feeds) for feeds in fitted]
    try:
        result = mpqc.compile(model.proto, dataclasses.replace(options, calibration=calibration))
    except MpqcError as exc:
        message = str(exc)
        assert "\n" not in message, f"a refusal of more than one line: {message!r}"
        assert not isinstance(exc, VerifyEachError), message
        assert not any(broken in message for broken in _BROKEN), message
        _event(f"refused: {type(exc).__name__}")
        return f"refused: {type(exc).__name__}"
    quantized = result.model
    onnx.checker.check_model(quantized, full_check=True)
    got = [run_ort(quantized, feeds) for feeds in fitted]
    floats = [i for i, array in enumerate(expected[0]) if array.dtype.kind == "f"]
    errors = relative_errors(
        [[outputs[i] for i in floats] for outputs in expected],
        [[outputs[i] for i in floats] for outputs in got],
    )
    _note(f"relative L2 errors per output: {errors}")
    worst = max(errors, default=0.0)
    if _least_weight_bits(result) <= 2:
        tolerance = max(tolerance, ZERO_OUTPUT)
    if worst > tolerance and options.uniform == "w8a8":
        reference = _onnxruntime_errors(model, fitted, expected, floats)
        _note(f"onnxruntime's quantize_static: relative L2 errors {reference}")
        if reference is not None:
            tolerance = max(tolerance, ORT_FACTOR * max(reference))
    assert worst <= tolerance, f"output error {errors} > {tolerance}"
    _event("compiled")
    return "compiled"


def _least_weight_bits(result: mpqc.CompileResult) -> int:
    """The fewest weight bits any layer got (32: none quantized)."""
    widths = [int(m.group(1)) for row in result.explanation.rows if (m := _WBITS.match(row.chosen))]
    return min(widths, default=32)


_WBITS = re.compile(r"w(\d+)")


def _onnxruntime_errors(
    model: FuzzModel,
    fitted: list[dict[str, np.ndarray]],
    expected: list[list[np.ndarray]],
    floats: list[int],
) -> list[float] | None:
    """The relative errors of onnxruntime's 8-bit ``quantize_static`` of ``model``, fitted to and
    run on ``fitted``: what eight bits cost this model, whoever quantizes it (None where
    onnxruntime's quantizer fails on it)."""
    from bench.baselines import QuantizeRequest, ort_static

    with tempfile.TemporaryDirectory() as folder:
        root = pathlib.Path(folder)
        onnx.save(model.proto, root / "float.onnx")
        request = QuantizeRequest(root / "float.onnx", fitted, root, root / "ort.onnx")
        try:
            ort_static("u8")(request)
            got = [run_ort(str(request.output), feeds) for feeds in fitted]
        except Exception:  # noqa: BLE001 - onnxruntime's quantizer raises many types
            return None
    return relative_errors(
        [[outputs[i] for i in floats] for outputs in expected],
        [[outputs[i] for i in floats] for outputs in got],
    )
