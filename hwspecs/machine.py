"""The machine mpqc runs on, as measurements name it: CPU model, VNNI, the spec closest to it.

Timings are only meaningful with the machine they came from: ``mpqc-hw profile`` records it in the
specs it writes and ``--measure`` prints it next to its numbers. Read from ``/proc/cpuinfo`` where
there is one (Linux), else from what ``platform`` knows.
"""

from __future__ import annotations

import platform
from pathlib import Path

from mpqc.hwspecs.errors import SpecError

__all__ = ["VNNI_FLAGS", "base_for_machine", "cpu_flags", "cpu_name", "vnni_flags"]

#: x86 flags of the int8 dot-product instructions onnxruntime's integer kernels use.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.is_file() else ""


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags this CPU reports (x86 ``flags``, Arm ``Features``; none without
    /proc/cpuinfo)."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def vnni_flags() -> tuple[str, ...]:
    """The VNNI flags this CPU reports (none on a CPU without VNNI, or without /proc/cpuinfo)."""
    flags = cpu_flags()
    return tuple(flag for flag in VNNI_FLAGS if flag in flags)


def base_for_machine(machine: str | None = None) -> str:
    """The bundled spec closest to this machine (the one a profile of it extends): Arm ->
    arm_a72; x86 -> x86_avx512_vnni if the CPU reports AVX-512 VNNI, else x86_avx2."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("armv8"):
        return "arm_a72"
    if machine in ("x86_64", "amd64", "i686", "i386", "x86"):
        return "x86_avx512_vnni" if "avx512_vnni" in vnni_flags() else "x86_avx2"
    raise SpecError(
        "",
        "base",
        f"no bundled spec for machine type {machine!r}",
        "pass --base NAME with a bundled spec name",
    )
