"""Which machine a benchmark ran on, and what that changes in onnxruntime's recipe.

onnxruntime's u8s8 integer kernels add pairs of u8 x s8 products in 16 bits on AVX2 and AVX-512
without VNNI, where they can saturate; its own advice there is ``reduce_range=True`` (7-bit
weights). With VNNI (``avx512_vnni`` or ``avx_vnni`` among the CPU flags) the products are summed in
32 bits and the full range is safe. The careful recipe follows that advice, so the machine decides
the recipe mpqc is compared against, and every result names the machine and the commit it ran.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnxruntime

from mpqc.hwspecs.machine import cpu_name, vnni_flags

REPO = Path(__file__).resolve().parent.parent


def reduce_range() -> bool:
    """onnxruntime's advice for u8s8 on this CPU: 7-bit weights unless it has VNNI."""
    return not vnni_flags()


def git_commit(repo: Path = REPO) -> dict[str, str]:
    """The commit the benchmark ran from, and the ``main`` commit it is based on (the merge base:
    on a branch rebased onto main, main's tip at the rebase). Empty outside a git checkout."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return {}
    base = git("merge-base", "HEAD", "main")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {
        "commit": commit + ("+dirty" if dirty else ""),
        "main_commit": base[:12] if base else "",
    }


def describe() -> dict[str, object]:
    """What a result records about the machine: CPU, VNNI, onnxruntime, the careful recipe's
    reduce_range (the CPU and its flags as mpqc's ``--measure`` and ``mpqc-hw profile`` name
    them)."""
    flags = list(vnni_flags())
    return {
        "cpu": cpu_name(),
        "vnni": bool(flags),
        "vnni_flags": flags,
        "onnxruntime": onnxruntime.__version__,
        "reduce_range": not flags,
    }


def summary(machine: dict[str, object]) -> str:
    """One line: ``Intel(R) Xeon(R) ..., VNNI (avx512_vnni), onnxruntime 1.32.0: reduce_range
    off``."""
    vnni = f"VNNI ({', '.join(machine['vnni_flags'])})" if machine["vnni"] else "no VNNI"
    return (
        f"{machine['cpu']}, {vnni}, onnxruntime {machine['onnxruntime']}: the careful recipe runs "
        f"with reduce_range={'True' if machine['reduce_range'] else 'False'}"
    )
