"""Which machine a run names (and the careful recipe it implies), and the NNCF peer's own
environment: its failures are a row's one-line reason, never a crash."""

from __future__ import annotations

import subprocess

import pytest

from bench import baselines, machine, nncf_peer
from bench.baselines import RecipeError

CPUINFO = """processor\t: 0
model name\t: Test CPU @ 2.0GHz
flags\t\t: fpu sse avx2 {extra}
"""


def test_vnni_decides_reduce_range_and_the_summary_says_so(monkeypatch) -> None:
    from mpqc.hwspecs import machine as cpu

    monkeypatch.setattr(cpu, "_cpuinfo", lambda: CPUINFO.format(extra="avx512f"))
    assert machine.reduce_range()
    described = machine.describe()
    assert described["cpu"] == "Test CPU @ 2.0GHz"
    assert described["vnni"] is False and described["reduce_range"] is True
    assert "Test CPU @ 2.0GHz, no VNNI" in machine.summary(described)
    assert "reduce_range=True" in machine.summary(described)
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: CPUINFO.format(extra="avx512_vnni avx_vnni"))
    vnni = machine.describe()
    assert vnni["vnni_flags"] == ["avx512_vnni", "avx_vnni"] and vnni["reduce_range"] is False
    assert "VNNI (avx512_vnni, avx_vnni)" in machine.summary(vnni)


def test_the_careful_recipe_names_its_ops_and_this_machines_reduce_range() -> None:
    description = baselines.RECIPES[baselines.CAREFUL].description
    assert "op_types_to_quantize=[Conv, ConvTranspose, Gemm, MatMul]" in description
    assert f"reduce_range={machine.reduce_range()}" in description


def test_git_commit_names_the_checkout_and_nothing_outside_one(tmp_path) -> None:
    assert machine.git_commit(tmp_path) == {}
    found = machine.git_commit()
    assert found and len(found["commit"].split("+")[0]) == 12


def test_a_failed_nncf_install_is_the_rows_reason(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(nncf_peer.venv.EnvBuilder, "create", lambda self, folder: None)

    def pip_fails(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(nncf_peer.subprocess, "run", pip_fails)
    with pytest.raises(RecipeError, match="nncf could not be installed: pip: ERROR: No matching"):
        nncf_peer.ensure_venv(tmp_path / "venv")
    assert not (tmp_path / "venv" / "installed.txt").exists()


def test_an_installed_nncf_environment_is_not_installed_again(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "venv"
    folder.mkdir()
    (folder / "installed.txt").write_text("3.4.0\n")
    monkeypatch.setattr(nncf_peer.subprocess, "run", pytest.fail)
    assert nncf_peer.ensure_venv(folder) == nncf_peer._python(folder)
    monkeypatch.setattr(nncf_peer, "venv_dir", lambda: folder)
    assert nncf_peer.prepare() == f"nncf 3.4.0 in {folder}"
