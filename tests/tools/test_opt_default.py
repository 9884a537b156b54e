"""``mpqc-opt -p 'default{...}'`` runs what ``mpqc`` runs: the same file, byte for byte."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from mpqc import examples
from mpqc.cli import main as mpqc_main
from mpqc.tools.opt import main as opt_main


@pytest.fixture(scope="module")
def digits_calib(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("digits-calib")
    for index, sample in enumerate(examples.digits_calibration()):
        np.savez(folder / f"{index:03d}.npz", **sample)
    return folder


@pytest.mark.parametrize(
    "policy, pipeline, inputs",
    [
        (["--uniform", "w4a8"], "default{uniform=w4a8}", []),
        ([], "default", ["--max-size", "0.5x"]),
    ],
)
def test_the_default_pipeline_writes_what_mpqc_writes(
    policy: list[str],
    pipeline: str,
    inputs: list[str],
    digits_calib: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    """``policy`` are mpqc's flags that ``pipeline`` spells; ``inputs`` are flags both take."""
    model = str(examples.digits_model_path())
    shared = ["--hw", "x86_avx2", "--calib", str(digits_calib), "--seed", "0", *inputs]
    assert mpqc_main([model, "-o", str(tmp_path / "mpqc.onnx"), "-q", *shared, *policy]) == 0
    assert opt_main([model, "-p", pipeline, "-o", str(tmp_path / "opt.onnx"), *shared]) == 0
    assert (tmp_path / "mpqc.onnx").read_bytes() == (tmp_path / "opt.onnx").read_bytes()
