"""Progress on the command line: off a terminal one plain line per pass that ran long enough
(with the steps it counted), nothing with ``-q``."""

from __future__ import annotations

import functools
import re

import pytest

from mpqc import cli, compiler
from mpqc.passes import Progress


def test_off_a_terminal_each_slow_pass_gets_one_line_with_its_steps(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # every pass counts as slow here, so every pass gets its line
    monkeypatch.setattr(compiler, "Progress", functools.partial(Progress, after=0.0))
    code = cli.main(
        [
            "--hw",
            "x86_avx2",
            "-o",
            str(tmp_path / "q.onnx"),
            "--max-size",
            "0.2x",
            "--max-latency",
            "1s",
            "--wbits",
            "8,4",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().err.splitlines()
    names = [re.fullmatch(r"\[(\d)/(\d)\] (\S+) \d+\.\d\d s(?: \((.*)\))?", line) for line in lines]
    assert all(names), lines
    assert [m.group(3) for m in names] == [
        "canonicalize",
        "calibrate",
        "cost",
        "sensitivity-output",
        "search",
        "recover",
        "lower-qdq",
        "verify",
    ]
    steps = {m.group(3): m.group(4) for m in names}
    assert steps["calibrate"] == "160 samples"
    # 6 layers x (w8, w4), and a8, a dynamic range and the pair w8a8 as lowered for the Gemm: a8
    # on the others, which all their choices share, cannot change the search's choice
    # (choosable.py)
    assert steps["sensitivity-output"] == "15 evaluations"
    assert steps["recover"] == "6 layers"
    assert steps["verify"] == "40 samples"
    assert steps["canonicalize"] is None


def test_quiet_runs_print_nothing(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--hw", "x86_avx2", "-o", str(tmp_path / "q.onnx"), "-q"])
    assert code == 0
    assert capsys.readouterr() == ("", "")
