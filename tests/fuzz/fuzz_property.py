"""The fuzzer's property: a valid model either compiles to one that passes onnx's checker and runs
in onnxruntime close to float, or is refused with one line.

"Close" is relative to the output's own scale: the relative L2 error ``|q - f| / |f|`` of each
float output over the samples mpqc fitted its ranges to (it holds every fifth out to verify). On
those, the ranges cover every activation, so what remains is rounding, which eight bits keep small;
samples the ranges did not see may clip (eight samples of a [1, 2] input make a narrow range),
which is the data's doing, not mpqc's. The bound is loose enough for the rounding of eight bits
through ten random layers and tight enough that a wrong scale, a dropped bias, a transposed weight
or a quantizer on the wrong tensor exceeds it.

A refusal is an ``MpqcError`` whose message is one line. The fuzzer's models all run in
onnxruntime, so a refusal saying that mpqc's own output does not load or check
(``VerifyEachError`` and verify's own checks) is a bug, not a refusal.
"""

from __future__ import annotations

import dataclasses

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
    assert max(errors, default=0.0) <= tolerance, f"output error {errors} > {tolerance}"
    _event("compiled")
    return "compiled"
