"""The one exception a user sees when a hardware spec is wrong.

A spec is user input, so a failure must read like a compiler diagnostic, not a traceback:
``file: field.path: what is wrong; allowed: what would be right``. Everything the loader rejects
(bad YAML, schema violations, ``base:`` cycles, oversized or binary files) becomes a ``SpecError``.
"""

from __future__ import annotations

from pathlib import Path

from mpqc.core.errors import MpqcError


class SpecError(MpqcError):
    """A hardware spec could not be loaded; the message is one line naming file, field and fix."""

    def __init__(self, source: str | Path, field: str, problem: str, allowed: str | None = None):
        self.source = str(source)
        self.spec_field = field
        self.problem = problem
        self.allowed = allowed
        where = f"{self.source}: {field}" if field else self.source
        text = f"{where}: {problem}"
        if allowed:
            text += f"; allowed: {allowed}"
        super().__init__(" ".join(text.split()))


class UnsupportedPrecisionError(ValueError):
    """The cost model was asked for a (weight bits, activation bits) pair the spec cannot run."""
