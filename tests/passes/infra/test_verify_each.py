"""``--verify-each``: the pass that leaves an invalid model is named in one line, nothing is
written, and a valid compilation writes the same bytes with the check as without."""

from __future__ import annotations

import dataclasses
import pathlib

import onnx
import onnx_ir as ir
import pytest
from models import small_cnn

import mpqc
from mpqc import cli
from mpqc.passes import Pass
from mpqc.passes.infra import registry
from mpqc.passes.infra.instruments import VERIFY_EACH, VerifyEachError
from mpqc.pipeline import Pipeline
from mpqc.tools import opt


class _DropFirstProducer(Pass):
    """A broken third-party pass: removes the first node, leaving its consumers' inputs
    produced by nothing."""

    name = "drop-first-producer"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model.graph.remove(next(iter(model.graph)), safe=False)
        return ir.passes.PassResult(model, modified=True)


@pytest.fixture
def broken_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._PASSES, _DropFirstProducer.name, _DropFirstProducer)


@pytest.mark.usefixtures("broken_pass")
def test_the_breaking_pass_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VERIFY_EACH)
    with pytest.raises(VerifyEachError, match=r"^verify-each: after pass 'drop-first-producer': "):
        Pipeline("canonicalize,drop-first-producer,canonicalize", verify_each=True).run(small_cnn())
    Pipeline("drop-first-producer").run(small_cnn())  # unchecked, the broken model goes through


@pytest.mark.usefixtures("broken_pass")
def test_mpqc_opt_reports_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, cnn_path: pathlib.Path
) -> None:
    out = tmp_path / "out.onnx"
    argv = [str(cnn_path), "-p", "drop-first-producer", "--verify-each", "-o", str(out)]
    assert opt.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mpqc-opt: verify-each: after pass 'drop-first-producer': ")
    assert not out.exists() and list(tmp_path.iterdir()) == [cnn_path]


@pytest.mark.usefixtures("broken_pass")
def test_mpqc_reports_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, cnn_path: pathlib.Path
) -> None:
    out = tmp_path / "q.onnx"
    argv = [str(cnn_path), "--hw", "x86_avx2", "-p", "drop-first-producer", "-o", str(out)]
    assert cli.main([*argv, "--verify-each"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mpqc: verify-each: after pass 'drop-first-producer': ")
    assert list(tmp_path.iterdir()) == [cnn_path]


def test_verified_compilation_writes_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, cnn_path: pathlib.Path
) -> None:
    monkeypatch.delenv(VERIFY_EACH)
    argv = [str(cnn_path), "--hw", "x86_avx2", "--uniform", "w8a8", "-q"]
    assert cli.main([*argv, "-o", str(tmp_path / "plain.onnx")]) == 0
    assert cli.main([*argv, "--verify-each", "-o", str(tmp_path / "verified.onnx")]) == 0
    assert (tmp_path / "plain.onnx").read_bytes() == (tmp_path / "verified.onnx").read_bytes()


@pytest.mark.usefixtures("broken_pass")
def test_compile_options_turn_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VERIFY_EACH)
    options = mpqc.CompileOptions(pipeline="drop-first-producer")
    mpqc.compile(small_cnn(), options)
    with pytest.raises(VerifyEachError, match="after pass 'drop-first-producer'"):
        mpqc.compile(small_cnn(), dataclasses.replace(options, verify_each=True))


@pytest.mark.usefixtures("broken_pass")
def test_models_over_the_protobuf_limit_are_checked_by_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mpqc.ir.io._PROTOBUF_LIMIT", 1000)
    checked: list[object] = []
    check_model = onnx.checker.check_model
    monkeypatch.setattr(
        onnx.checker,
        "check_model",
        lambda model, **kw: (checked.append(model), check_model(model, **kw)),
    )
    Pipeline("canonicalize", verify_each=True).run(small_cnn())
    assert isinstance(checked[-1], str)  # the first is load's check of the input
    with pytest.raises(VerifyEachError, match="after pass 'drop-first-producer'"):
        Pipeline("drop-first-producer", verify_each=True).run(small_cnn())
