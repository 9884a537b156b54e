"""Golden IR-dump tests, one file per pass, run through ``mpqc-opt`` and checked with FileCheck.

xDSL's and MLIR's way: each ``*.check`` file says how to run the tool (``// RUN:``) and what the
IR printed after a pass must contain (``// CHECK:``, ``CHECK-NEXT``, ``CHECK-NOT``, ...), in
order. Checks name the structure a pass is responsible for (which nodes, types and annotations it
writes), not every number, so they survive a change of CPU while still failing when a pass emits
something else. ``RUN: MODEL | ARGS`` builds ``MODEL`` with tests/models.py; ``{calib}`` is ten
calibration samples for it.
"""

from __future__ import annotations

import pathlib
import shlex
import shutil
import subprocess
import sys

import models as builders
import numpy as np
import pytest

from mpqc import ir

CASES = sorted(pathlib.Path(__file__).parent.glob("*.check"))


def _run_line(case: pathlib.Path) -> tuple[str, list[str]]:
    lines = [line for line in case.read_text().splitlines() if line.startswith("// RUN:")]
    assert len(lines) == 1, f"{case.name}: needs exactly one '// RUN: MODEL | ARGS' line"
    model, _, args = lines[0].removeprefix("// RUN:").partition("|")
    return model.strip(), shlex.split(args)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_dump(case: pathlib.Path, tmp_path: pathlib.Path) -> None:
    filecheck = shutil.which("filecheck", path=str(pathlib.Path(sys.executable).parent))
    assert filecheck, "the dev extras install filecheck"
    name, args = _run_line(case)
    model = getattr(builders, name)()
    ir.save(model, tmp_path / "model.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    for index, sample in enumerate(builders.random_inputs(model, 10)):
        np.savez(calib / f"s{index:02d}.npz", **sample)
    argv = [arg.replace("{calib}", str(calib)) for arg in args]
    run = subprocess.run(
        [sys.executable, "-m", "mpqc.tools.opt", str(tmp_path / "model.onnx"), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    check = subprocess.run([filecheck, str(case)], input=run.stderr, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
