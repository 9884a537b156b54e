"""Shared fixtures: small models on disk, calibration data in the shapes users bring it."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import settings
from models import random_inputs, small_cnn

# Property tests explore new examples on every developer run; CI replays a fixed, derandomized set
# so that a run fails only for a change, never for a draw (the example database stays local).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Every pass run by the tests (commands in subprocesses included) must read only the annotations it
# declares (mpqc.passes.infra.base); users' compilations skip this check on mpqc's own code.
os.environ["MPQC_CHECK_CONTRACTS"] = "1"
# ... and leave a model that onnx's checker and onnxruntime accept (``--verify-each``);
# MPQC_VERIFY_EACH=0 turns that off, to time the suite without it.
os.environ.setdefault("MPQC_VERIFY_EACH", "1")


@pytest.fixture
def cnn() -> ir.Model:
    return small_cnn()


@pytest.fixture
def cnn_path(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "cnn.onnx"
    ir.save(small_cnn(), path)
    return path


@pytest.fixture
def cnn_samples() -> list[dict[str, np.ndarray]]:
    """Ten calibration samples for ``small_cnn`` (batch 1)."""
    return random_inputs(small_cnn(), 10)


@pytest.fixture
def calib_dir(tmp_path: pathlib.Path, cnn_samples: list[dict[str, np.ndarray]]) -> pathlib.Path:
    """The samples as a ``--calib`` directory: one .npz per sample, keys = input names."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, sample in enumerate(cnn_samples):
        np.savez(folder / f"sample_{i:03d}.npz", **sample)
    return folder


@pytest.fixture
def calibrate_pass() -> type:
    """The ``calibrate`` pass class (registered once its module is imported)."""
    module = pytest.importorskip("mpqc.passes.analysis.calibrate")
    return module.CalibratePass
