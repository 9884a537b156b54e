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


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--seed", "-1"], "mpqc: --seed: -1: a seed is a whole number from 0 to 2**32 - 1"),
        (["--seed", str(2**32)], "mpqc: --seed: 4294967296: a seed is a whole number"),
        (["--max-size=-0.5x"], "mpqc: --max-size: '-0.5x': a budget must be a positive"),
        (["--max-size", "0x"], "mpqc: --max-size: '0x': a budget must be a positive"),
        (["--max-size", "0B"], "mpqc: --max-size: '0B': a budget must be a positive"),
        (["--max-size", "0"], "mpqc: --max-size: '0' is not a valid bytes quantity"),
        (["--max-bops=-2G"], "mpqc: --max-bops: '-2G': a budget must be a positive"),
        (["--max-bops", "1.2.3G"], "mpqc: --max-bops: '1.2.3G': give a count such as 2G"),
        (["--max-latency", "nan ms"], "mpqc: --max-latency:"),
        (["--uniform", ""], "mpqc: argument --uniform: give a bit choice such as w8a8"),
        (["--shape", "N=" + "1" * 21], "mpqc: --shape: N: a size must be between 1 and 2**63 - 1"),
        (
            ["--shape", "nosuch=4"],
            "mpqc: --shape: no graph input has a symbolic dim named 'nosuch'",
        ),
        (["--shape", "nosuch=1,2"], "mpqc: --shape: nosuch= names no graph input (the inputs:"),
        (["--shape", "image=4,17"], "mpqc: --shape: image= gives 2 dims, the input has 4"),
        (["--shape", "image=1,3,8,9"], "mpqc: --shape: image= sets axis 3 to 9, but the input's"),
    ],
)
def test_options_found_wrong_only_after_the_work_are_refused_before_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cnn_path: pathlib.Path,
    argv: list[str],
    line: str,
) -> None:
    # They were "internal error"s, exit 2 (infeasible) or silently ignored, some after all the work.
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the options must be refused before any pass runs")

    monkeypatch.setattr(mpqc.pipeline.Pipeline, "run_ir", no_work)
    out = cnn_path.parent / "q.onnx"
    try:
        code = cli.main([str(cnn_path), "--hw", "x86_avx2", "-o", str(out), *argv])
    except SystemExit as refused_by_argparse:
        code = refused_by_argparse.code
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(line) and len(err.splitlines()) == 1 and not out.exists()


def test_python_callers_get_the_same_checks_before_any_work() -> None:
    with pytest.raises(PassInputError, match="seed: -3: a seed is a whole number"):
        mpqc.compile(small_cnn(), mpqc.CompileOptions(seed=-3))
    with pytest.raises(PassInputError, match="max_size: -1.0: a budget must be a positive"):
        mpqc.compile(small_cnn(), mpqc.CompileOptions(max_size=-1.0))
