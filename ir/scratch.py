"""Temporary folders a run works in, named so that a later run can remove what a killed one left.

A SIGKILL (or the OOM killer) skips every finalizer, and a big model's spilled weights or an
evaluator's weight stacks are gigabytes. So every scratch folder is named
``mpqc-<kind>-<host>-<pid>-<random>`` in the temporary directory, and making one first removes the
scratch folders of this machine whose process is gone. The host part keeps a run from taking
another machine's live folder on a shared temporary directory for a dead one of its own.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile

__all__ = ["HOST", "alive", "remove_dead", "scratch_folder"]

#: This machine, as folder names carry it.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]

_SCRATCH = re.compile(r"mpqc-[a-z]+-([0-9a-f]{8})-([0-9]+)-")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead(folder: str | os.PathLike[str], pattern: re.Pattern[str]) -> None:
    """Remove the folders in ``folder`` whose name ``pattern`` matches with this machine's host
    (group 1) and a process that is gone (group 2)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if (
            match
            and match.group(1) == HOST
            and entry.is_dir(follow_symlinks=False)
            and not alive(int(match.group(2)))
        ):
            shutil.rmtree(entry.path, ignore_errors=True)


def scratch_folder(kind: str) -> str:
    """A new temporary folder for ``kind`` of scratch data, after sweeping dead runs' folders."""
    root = tempfile.gettempdir()
    remove_dead(root, _SCRATCH)
    return tempfile.mkdtemp(prefix=f"mpqc-{kind}-{HOST}-{os.getpid()}-", dir=root)
