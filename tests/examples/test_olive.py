"""The Olive example (``examples/olive``) runs as a pass of a real Olive workflow.

Olive needs PyTorch, which mpqc does not, so this runs only where Olive is installed.
"""

import json
import pathlib
import shutil

import numpy as np
import onnx
import pytest

from mpqc import examples
from mpqc.core.bits import Bits

olive_workflows = pytest.importorskip("olive.workflows")

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "olive"


def test_mpqc_runs_as_an_olive_pass(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    shutil.copy(examples.digits_model_path(), tmp_path / "model.onnx")
    (tmp_path / "calib").mkdir()
    for index, sample in enumerate(examples.digits_calibration()[:40]):
        np.savez(tmp_path / "calib" / f"{index:03d}.npz", **sample)
    config = json.loads((EXAMPLE / "workflow.json").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from mpqc_olive import package_config

    olive_workflows.run(config, package_config=package_config())

    (written,) = (tmp_path / "olive-out").rglob("*.onnx")
    model = onnx.load(written)
    report = json.loads({p.key: p.value for p in model.metadata_props}["mpqc.report"])
    assert report["search"]["objective"] == "size"
    chosen = [Bits.parse(layer["chosen"], widths=None) for layer in report["search"]["layers"]]
    assert chosen and all(bits.w <= 8 for bits in chosen)  # every layer quantized, by the search
    quantized = {n.op_type for n in model.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    assert quantized == {"QuantizeLinear", "DequantizeLinear"}
