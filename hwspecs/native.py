"""``--hw auto``: the spec of the machine mpqc runs on, profiled once and cached.

A bundled spec describes a class of chips; the user's own CPU differs from it in throughput,
bandwidth and per-op overheads, and onnxruntime's kernels change between releases. ``auto`` (also
spelled ``native``) runs ``mpqc-hw profile`` here the first time it is asked for (single-threaded,
the latency mpqc predicts and ``--measure`` checks) and keeps the fitted spec in the user's cache.
The cache key is everything the fit depends on: the machine type, CPU model and instruction-set
flags, the onnxruntime version and the profile's format. A new CPU, a VM that hides AVX-512 or an
onnxruntime upgrade gets a profile of its own; an unreadable cached file is profiled again.

The cache lives in ``$MPQC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mpqc``, else ``~/.cache/mpqc``, under
``hw/``, one file per key, written atomically (``profiling.write_spec``), so concurrent compilations
at worst profile twice.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

from mpqc.hwspecs.errors import SpecError
from mpqc.hwspecs.loader import load_path
from mpqc.hwspecs.machine import base_for_machine, cpu_flags, cpu_name

__all__ = ["NAMES", "cache_path", "profiled"]

#: The ``--hw`` names that mean "this machine".
NAMES = ("auto", "native")

#: Bumped when what a profile measures or how it is fitted changes, so old caches are not reused.
PROFILE_FORMAT = 2


def cache_dir() -> Path:
    root = os.environ.get("MPQC_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mpqc"


def machine_key() -> str:
    """What a profile depends on, hashed: machine type, CPU, its flags, onnxruntime, the format."""
    import onnxruntime  # here: reading a bundled spec must not import onnxruntime

    parts = [
        platform.machine(),
        cpu_name(),
        " ".join(sorted(cpu_flags())),
        onnxruntime.__version__,
        str(PROFILE_FORMAT),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cache_path() -> Path:
    """Where this machine's profile is (or will be) kept."""
    return cache_dir() / "hw" / f"{base_for_machine()}-{machine_key()}.yaml"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def profiled(log: Callable[[str], None] = _stderr, quick: bool = False) -> Path:
    """The path of this machine's spec: the cached profile, or a new one (``log`` says so: it
    takes a minute)."""
    path = cache_path()
    if path.is_file():
        try:
            load_path(path)
            return path
        except SpecError as error:
            log(f"mpqc: the cached profile {path} is unreadable ({error}); profiling again")
    from mpqc.hwspecs import profiling  # onnx and onnxruntime: only when profiling

    base = base_for_machine()
    log(
        f"mpqc: profiling this machine once for --hw auto ({cpu_name()}, "
        f"{'seconds' if quick else 'about a minute'}); cached in {path}"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SpecError(
            path.parent,
            "",
            f"cannot create the profile cache ({error.strerror}): set MPQC_CACHE_DIR to a "
            "writable folder",
        ) from error
    document = profiling.profile(base, threads=1, quick=quick)
    header = f"Written by --hw auto (mpqc-hw profile{' --quick' if quick else ''} --threads 1)."
    profiling.write_spec(document, path, header)
    return path
