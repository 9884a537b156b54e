"""Errors name the option at fault: by its field in Python, by the flag a command spells it with."""

from __future__ import annotations

import pathlib

import pytest
from models import small_cnn

import mpqc
from mpqc import cli, examples
from mpqc.passes import PassInputError
from mpqc.tools import opt


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"max_size": "0.3q"}, "max_size", "'0.3q' is not a valid bytes quantity"),
        ({"max_bops": "lots"}, "max_bops", "give a count such as 2G"),
        ({"uniform": "w9x"}, "uniform", "'w9x' is not a bit choice"),
        ({"uniform": "w4a8", "max_size": "0.5x"}, "uniform", "budgets cannot apply"),
        ({"weight_only": True, "max_size": "0.5x"}, "weight_only", "drop the budgets"),
        ({"recover": True}, "recover", "needs calibration data"),
        ({"hw": "x86_avx2", "uniform": "w16a4"}, "uniform", "x86_avx2 does not run 4-bit"),
    ],
)
def test_python_callers_get_the_field(options: dict, field: str, message: str) -> None:
    with pytest.raises(PassInputError) as info:
        mpqc.compile(small_cnn(), mpqc.CompileOptions(**options))
    assert info.value.field == field and message in info.value.message
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--max-size", "0.3q"], "mpqc: --max-size: '0.3q' is not a valid bytes quantity"),
        (["--uniform", "w4a8", "--max-size", "0.5x"], "mpqc: --uniform: fixes every layer's bits"),
        (["--weight-only", "--max-latency", "1ms"], "mpqc: --weight-only: quantizes every"),
        (["--strategy", "nsga2", "-p", "canonicalize"], "mpqc: --strategy: is an option of the"),
    ],
)
def test_the_command_spells_the_field_as_its_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, argv: list[str], line: str
) -> None:
    out = tmp_path / "q.onnx"
    assert cli.main(["--hw", "x86_avx2", "-o", str(out), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.splitlines()) == 1 and not out.exists()


def test_mpqc_opt_names_an_option_it_has_no_flag_for_by_its_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = str(examples.digits_model_path())
    argv = [model, "-p", "default{uniform=w4a8}", "--hw", "x86_avx2", "--max-size", "0.5x"]
    assert opt.main(argv) == 1
    assert capsys.readouterr().err.startswith("mpqc-opt: uniform: fixes every layer's bits")
