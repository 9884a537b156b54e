"""The files ``mpqc`` and ``mpqc-opt`` write are the user's: no output over an input or over another
output, no device replaced, every output checked before the work, one commit, an honest line when
interrupted."""

from __future__ import annotations

import json
import os
import pathlib

import onnx
import pytest

import mpqc
from mpqc import cli
from mpqc.tools import opt


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals must come before the pipeline runs."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the outputs must be refused before any pass runs")

    monkeypatch.setattr(mpqc.pipeline.Pipeline, "run_ir", refuse)


def _refused(capsys: pytest.CaptureFixture[str], main, argv: list, fragment: str) -> None:
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and fragment in err, err


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


@pytest.mark.parametrize(
    ("flag", "target", "fragment"),
    [
        ("--report-json", "cnn.onnx", "--report-json: {cnn} is the input model"),
        ("--report", "link.md", "--report: {folder}/link.md is the input model"),
        ("--report-json", "hard.json", "--report-json: {folder}/hard.json is the input model"),
        ("--report-json", "q.onnx", "--report-json: {folder}/q.onnx is also where output goes"),
        ("--plan-out", "q.onnx", "--plan-out: {folder}/q.onnx is also where output goes"),
        ("--ir-dump-dir", "q.onnx", "--ir-dump-dir: {folder}/q.onnx is also where output goes"),
        ("--report", "q.onnx.md", None),
        ("--emit-pareto", "cnn.onnx", "--emit-pareto: {cnn} is a file: give a folder"),
        ("--emit-pareto", "q.onnx", "--emit-pareto: {folder}/q.onnx is also where output goes"),
    ],
)
def test_mpqc_refuses_outputs_that_are_inputs_or_each_other(
    capsys, cnn_path, no_work, flag, target, fragment
) -> None:
    folder = cnn_path.parent
    (folder / "link.md").symlink_to(cnn_path)
    os.link(cnn_path, folder / "hard.json")
    before = _snapshot(folder)
    argv = [cnn_path, "--hw", "generic", "-o", folder / "q.onnx", flag, folder / target]
    if fragment is None:  # a distinct report next to the model is fine: the work starts
        cli.main([str(a) for a in argv])
        assert "must be refused before any pass runs" in capsys.readouterr().err
        return
    _refused(capsys, cli.main, argv, fragment.format(cnn=cnn_path, folder=folder))
    assert _snapshot(folder) == before


@pytest.mark.parametrize("target", ["fifo", "/dev/null"])
def test_mpqc_refuses_to_replace_a_device_or_a_fifo(capsys, cnn_path, no_work, target) -> None:
    fifo = cnn_path.parent / "fifo"
    os.mkfifo(fifo)
    path = fifo if target == "fifo" else pathlib.Path(target)
    kind = "a FIFO" if target == "fifo" else "a character device"
    _refused(
        capsys,
        cli.main,
        [cnn_path, "--hw", "generic", "-o", path],
        f"--output: {path} is {kind}, not a regular file",
    )
    assert fifo.is_fifo() and pathlib.Path("/dev/null").is_char_device()


def test_mpqc_opt_refuses_to_write_over_its_input(capsys, cnn_path, no_work) -> None:
    before = cnn_path.read_bytes()
    argv = [cnn_path, "-p", "canonicalize", "-o", cnn_path]
    _refused(capsys, opt.main, argv, f"mpqc-opt: --output: {cnn_path} is the input model")
    argv = [cnn_path, "-p", "canonicalize", "--report-json", cnn_path]
    _refused(capsys, opt.main, argv, f"mpqc-opt: --report-json: {cnn_path} is the input model")
    assert cnn_path.read_bytes() == before


def test_an_output_name_the_file_system_refuses_is_refused_before_the_work(
    capsys, cnn_path, no_work
) -> None:
    long = cnn_path.parent / ("r" * 300 + ".json")
    argv = [cnn_path, "--hw", "generic", "-o", cnn_path.parent / "q.onnx", "--report-json", long]
    _refused(capsys, cli.main, argv, "the name is longer than this file system allows")


def test_a_255_byte_output_name_is_written(capsys, cnn_path) -> None:
    out = cnn_path.parent / ("q" * 250 + ".onnx")
    assert cli.main([str(cnn_path), "--hw", "generic", "-o", str(out), "--uniform", "w8a8"]) == 0
    assert out.stat().st_size > 0
    assert sorted(os.listdir(cnn_path.parent)) == sorted(["cnn.onnx", out.name])


def test_an_interrupt_after_the_commit_says_what_was_written(capsys, cnn_path, monkeypatch) -> None:
    # It used to say "nothing was written" with the new model in place (and the reports not).
    def interrupted(*args: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_summary", interrupted)
    out, report = cnn_path.parent / "q.onnx", cnn_path.parent / "r.json"
    argv = [cnn_path, "--hw", "generic", "-o", out, "--uniform", "w8a8", "--report-json", report]
    assert cli.main([str(a) for a in argv]) == 130
    assert capsys.readouterr().err == (
        f"mpqc: interrupted by SIGINT; after writing {out}, {report}\n"
    )
    assert json.loads(report.read_text())["bytes"]["output"] == out.stat().st_size


def test_an_interrupt_before_the_commit_writes_nothing(capsys, cnn_path, monkeypatch) -> None:
    def interrupted(*args: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_report_json", interrupted)  # the model is staged already
    out, report = cnn_path.parent / "q.onnx", cnn_path.parent / "r.json"
    argv = [cnn_path, "--hw", "generic", "-o", out, "--uniform", "w8a8", "--report-json", report]
    assert cli.main([str(a) for a in argv]) == 130
    assert capsys.readouterr().err == "mpqc: interrupted by SIGINT; nothing was written\n"
    assert os.listdir(cnn_path.parent) == ["cnn.onnx"]


def test_the_plan_and_the_front_are_part_of_the_one_commit(
    capsys, cnn_path, calib_dir, tmp_path, monkeypatch
) -> None:
    # --plan-out and --emit-pareto used to be written during the compilation, before the model:
    # an interrupt or a failure after them left them behind with "nothing was written".
    out = tmp_path / "out"
    out.mkdir()
    front, plan, report = out / "front" / "points", out / "plan.yaml", out / "r.json"
    argv = [cnn_path, "--hw", "x86_avx2", "--calib", calib_dir, "-o", out / "q.onnx"]
    argv += ["--max-size", "0.5x"]
    argv += ["--emit-pareto", front, "--plan-out", plan, "--report-json", report]
    real_report_json = cli._report_json

    def interrupted(*args: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_report_json", interrupted)
    assert cli.main([str(a) for a in argv]) == 130
    assert capsys.readouterr().err == "mpqc: interrupted by SIGINT; nothing was written\n"
    assert os.listdir(out) == []

    monkeypatch.setattr(cli, "_report_json", real_report_json)
    assert cli.main([str(a) for a in [*argv, "-q"]]) == 0
    emitted = json.loads(report.read_text())["emitted"]
    assert emitted and sorted(os.listdir(front)) == sorted(pathlib.Path(p).name for p in emitted)
    assert sorted(os.listdir(out)) == ["front", "plan.yaml", "q.onnx", "r.json"]


def test_no_output_may_be_the_input_models_external_data(capsys, cnn_path, no_work) -> None:
    # Found when the model is loaded, before the work: the data file is named inside the model.
    folder = cnn_path.parent
    model = folder / "ext.onnx"
    proto = onnx.load(cnn_path)
    onnx.save(proto, model, save_as_external_data=True, location="weights.bin", size_threshold=0)
    before = _snapshot(folder)
    for main, argv in [
        (cli.main, [model, "--hw", "generic", "-o", folder / "q.onnx"]),
        (opt.main, [model, "-p", "canonicalize"]),
    ]:
        _refused(
            capsys,
            main,
            [*argv, "--report-json", folder / "weights.bin"],
            f"--report-json: {folder}/weights.bin is the input model's external data",
        )
    assert _snapshot(folder) == before
