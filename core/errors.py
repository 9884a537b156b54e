"""``MpqcError``: the one base of every error that means "the input is wrong".

Each layer raises its own subclass (``SpecError``, ``ModelError``, ``PassInputError``,
``DataError``, ``SearchError``, ...) so a caller can tell what was wrong, and the commands catch the
base to print one line instead of a traceback.

An error about one option carries that option's *field* name (``max_size``, ``shapes``, ``hw``:
the name in ``CompileOptions`` or a pass's options) rather than a command-line flag: only the front
knows that the field ``max_size`` is spelled ``--max-size`` on its command line, and a Python caller
never typed a flag at all.
"""

from __future__ import annotations

__all__ = ["MpqcError", "UsageError"]


class MpqcError(ValueError):
    """Bad input, explained in one line; ``field`` names the option it is about, if one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class UsageError(MpqcError):
    """A command line that cannot be honoured: argparse refused it, or an option needs a missing
    package or an unreachable service."""
