"""One bit-width choice, ``Bits(w, a)``, and its one spelling, ``"w4a8"``.

A layer's choice is a (weight bits, activation bits) pair; an operand that stays float counts
``FLOAT_BITS`` (32, the float type the CPU providers compute in), so a weight-only layer is
``w4a32`` and an unquantized one ``w32a32``. Float is a width rather than ``None`` so that choices
sort, compare and price like every other pair (bit-operations multiply widths).

``Bits`` is a named tuple: code that unpacks ``wbits, abits = bits`` or compares with a plain
``(w, a)`` tuple keeps working, and the tuple order (weights first) is the order choices sort in.
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import NamedTuple

from mpqc.core.errors import MpqcError

__all__ = ["COMPILABLE", "FLOAT_BITS", "Bits"]

FLOAT_BITS = 32
"""The width that means "not quantized: stays float" in choices, annotations and configurations."""

COMPILABLE: frozenset[int] = frozenset({*range(2, 17), FLOAT_BITS})
"""Widths the compiler can lower an operand to: integer grids of 2..16 bits, or float."""

_TEXT = re.compile(r"w(\d+)a(\d+)")


class Bits(NamedTuple):
    """A (weight bits, activation bits) choice; ``str()`` gives ``"w4a8"``."""

    w: int
    a: int

    @classmethod
    def parse(cls, text: str, widths: Container[int] | None = COMPILABLE) -> Bits:
        """``"w4a8"`` -> ``Bits(4, 8)``; an ``MpqcError`` naming the expected form otherwise.

        Case and surrounding blanks are forgiven (users type ``W8A8``). ``widths`` is the set each
        operand must fall in: by default what the compiler can lower; ``None`` accepts any
        positive width (a hardware spec may describe 1-bit pairs mpqc never emits).
        """
        match = _TEXT.fullmatch(text.strip().lower())
        if not match:
            raise MpqcError(f"'{text}' is not a bit choice like w8a8 or w4a8")
        bits = cls(int(match.group(1)), int(match.group(2)))
        for kind, width in (("weight", bits.w), ("activation", bits.a)):
            if width < 1 or (widths is not None and width not in widths):
                raise MpqcError(
                    f"{kind} bits {width} in '{text}' are outside 2..16 (or {FLOAT_BITS} for float)"
                )
        return bits

    @property
    def float_weights(self) -> bool:
        return self.w == FLOAT_BITS

    @property
    def float_activations(self) -> bool:
        return self.a == FLOAT_BITS

    def __str__(self) -> str:
        return f"w{self.w}a{self.a}"

    def text(self) -> str:
        """How messages name the choice: ``w8a8``, or ``w8 (activations float)`` for weights
        quantized alone (``w8a32`` would read as 32-bit integer activations)."""
        return f"w{self.w} (activations float)" if self.float_activations else str(self)
