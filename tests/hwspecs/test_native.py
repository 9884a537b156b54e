"""``--hw auto``: this machine's spec is profiled once, cached by what the fit depends on."""

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from mpqc import hwspecs
from mpqc.hwspecs import machine, native, profiling


@pytest.fixture
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("MPQC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def profiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the minute of measuring with a document that only renames the base spec; the list
    records every profile taken."""
    taken: list[str] = []

    def fake(base: str, threads: int, quick: bool, log: Any = None) -> dict[str, Any]:
        taken.append(base)
        return {"base": base, "description": f"profiled here ({len(taken)})", "threads": threads}

    monkeypatch.setattr(profiling, "profile", fake)
    return taken


def test_auto_profiles_once_and_then_reads_the_cache(cache, profiles, capsys):
    first = hwspecs.load("auto")
    assert profiles == [machine.base_for_machine()]
    assert "profiling this machine once" in capsys.readouterr().err
    assert native.cache_path().parent == cache / "hw"
    assert first.name == native.cache_path().stem
    assert first.description == "profiled here (1)"

    again = hwspecs.load("native")
    assert again is first
    assert profiles == [machine.base_for_machine()]
    assert capsys.readouterr().err == ""


def test_auto_inherits_what_a_profile_cannot_measure(cache, profiles):
    spec = hwspecs.load("auto")
    base = hwspecs.load(machine.base_for_machine())
    assert spec.supported_pairs() == base.supported_pairs()
    assert spec.threads == 1


def test_another_cpu_or_onnxruntime_gets_a_profile_of_its_own(cache, profiles, monkeypatch):
    here = native.cache_path()
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset({"sse2"}))
    assert native.cache_path() != here
    monkeypatch.undo()
    monkeypatch.setenv("MPQC_CACHE_DIR", str(cache))
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    assert native.cache_path() != here


def test_an_unreadable_cached_profile_is_profiled_again(cache, profiles, capsys):
    path = native.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("name: [unclosed\n")
    spec = hwspecs.load("auto")
    assert len(profiles) == 1
    assert "unreadable" in capsys.readouterr().err
    assert spec.description == "profiled here (1)"


def test_an_unwritable_cache_is_one_line(tmp_path, profiles, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MPQC_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(hwspecs.SpecError, match="MPQC_CACHE_DIR"):
        hwspecs.load("auto")


def test_the_cli_compiles_for_this_machine(cache, profiles, tmp_path):
    hwspecs.load("auto")  # the fake profile, cached: the subprocess reads it
    output = tmp_path / "digits.q.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "mpqc.cli", "--hw", "auto", "--uniform", "w8a8", "-o", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, "MPQC_CACHE_DIR": str(cache)},
    )
    assert run.returncode == 0, run.stderr
    assert "profiling" not in run.stderr
    assert output.is_file()


@pytest.mark.slow
def test_a_real_quick_profile_is_cached(cache):
    path = native.profiled(log=lambda line: None, quick=True)
    spec = hwspecs.load("auto")
    assert path == native.cache_path()
    assert spec.name == path.stem
    assert "measured" in spec.description
