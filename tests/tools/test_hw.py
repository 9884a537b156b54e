"""``mpqc-hw``: every subcommand works, and bad input is one line on stderr with exit status 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mpqc import hwspecs
from mpqc.tools.hw import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpqc-hw: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_list_names_every_bundled_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in hwspecs.names():
        assert name in out


@pytest.mark.parametrize("name", hwspecs.names())
def test_show_prints_the_tables(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, out, _ = run(capsys, "show", name)
    assert code == 0
    assert name in out and "precisions" in out and "memory" in out
    spec = hwspecs.load(name)
    for level in spec.memory:
        assert level.name in out


def test_show_says_how_the_runtime_shapes_costs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", "x86_avx2")
    assert code == 0
    assert "each inference call: 8 us" in out
    assert (
        "fused into a float kernel: Clip, HardSigmoid, HardSwish" in out
        and "fused into an integer kernel: Relu" in out
    )
    assert "integer Conv runs in another layout: a Transpose in and out" in out
    assert "5.6 GMAC/s" in out, "the float depthwise rate"
    code, out, _ = run(capsys, "show", "bismo_edge")
    assert "operands move at exactly their bit-width" in out


def test_show_bit_flexible_spec_prints_the_speedup_matrix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "show", "bitfusion")
    assert code == 0
    assert "throughput relative to the reference" in out
    assert "16" in out and "capped at 64x" in out


def test_validate_good_and_bad_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"base": "x86_avx2", "threads": 2}))
    code, out, _ = run(capsys, "validate", str(good))
    assert code == 0 and "good.yaml: ok" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"base": "x86_avx2", "bits": {"weights": [3, 64], "activations": [8]}})
    )
    code, _, err = run(capsys, "validate", str(good), str(bad))
    assert_user_error(code, err, "bad.yaml: bits.weights[1]: 64 is not allowed")


def test_verbose_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "-v", "validate", str(tmp_path / "missing.yaml"))
    assert code == 1 and "Traceback" in err and "no such spec file" in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "required"),
        (["frobnicate"], "invalid choice"),
        (["show"], "the following arguments are required: spec"),
        (["show", "no_such_chip"], "no_such_chip: unknown spec name"),
        (["validate", "/nonexistent.yaml"], "no such spec file"),
        (["profile"], "-o/--output"),
        (["profile", "-o", "x.yaml", "--threads", "0"], "--threads must be >= 1"),
        (["profile", "-o", "x.yaml", "--threads", "two"], "invalid int value"),
        (["profile", "-o", "/nonexistent/dir/x.yaml"], "not a file path in an existing directory"),
        (["profile", "-o", "x.yaml", "--base", "nope"], "nope: unknown spec name"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, fragment)


def test_profile_output_directory_is_rejected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "profile", "-o", str(tmp_path))
    assert_user_error(code, err, "not a file path")


def test_profile_quick_writes_a_valid_fitted_spec(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_path = tmp_path / "here.yaml"
    out_path.write_text("previous content\n")
    code, out, err = run(capsys, "profile", "--quick", "-o", str(out_path))
    assert code == 0, err
    assert "wrote" in out
    spec = hwspecs.validate(out_path)
    document = yaml.safe_load(out_path.read_text())
    assert document["base"] in ("x86_avx2", "x86_avx512_vnni", "arm_a72")
    base = hwspecs.load(document["base"])
    assert set(document["precisions"]) == {"float", "w8a8", "w8a8_signed", "w4a8", "w8a16"}
    for key in ("float", "w8a8", "w4a8"):
        measured = spec.precisions[key].throughput
        assert (
            base.precisions[key].throughput / 100
            <= measured
            <= base.precisions[key].throughput * 100
        )
    assert spec.precisions["w4a8"].weight_unpack is not None
    assert spec.overhead("QuantizeLinear").per_element > 0
    assert spec.precision(4, 8).emulated_as == base.precision(4, 8).emulated_as, (
        "emulated paths are inherited"
    )
    assert spec.precision(2, 16) == base.precision(2, 16), (
        "pairs the profile does not measure are inherited"
    )
    ranking = document["provenance"]["ranking_spearman"]
    assert set(ranking) == {"fitted", document["base"]}
    assert all(-1.0 <= value <= 1.0 for value in ranking.values())
    assert not list(tmp_path.glob(".here-*")), "no temp file is left behind"
