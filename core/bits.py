"""One bit-width choice, ``Bits(w, a)``, and its one spelling, ``"w4a8"``.

A layer's choice is a (weight bits, activation bits) pair; an operand that stays float counts
``FLOAT_BITS`` (32, the float type the CPU providers compute in), so a weight-only layer is
``w4a32`` and an unquantized one ``w32a32``. Float is a width rather than ``None`` so that choices
sort, compare and price like every other pair (bit-operations multiply widths).

Activations are quantized with a range calibrated once (static), or with a range measured on every
run (dynamic: onnxruntime's ``DynamicQuantizeLinear``, which is uint8 only), spelled ``w8adyn``:
8-bit activations whose range follows the input, which keeps outliers exact where a calibrated
range clips or coarsens them. A dynamic choice is the pair with a third element, ``(8, 8, True)``;
a static one is exactly the plain pair ``(w, a)``, so code that unpacks ``wbits, abits = bits``
or compares with a plain tuple keeps working for every static choice, and a dynamic choice is
never equal to the static one of the same widths. The tuple order (weights first) is the order
choices sort in.
"""

from __future__ import annotations

import re
from collections.abc import Container

from mpqc.core.errors import MpqcError

__all__ = ["COMPILABLE", "DYNAMIC_BITS", "FLOAT_BITS", "Bits"]

FLOAT_BITS = 32
"""The width that means "not quantized: stays float" in choices, annotations and configurations."""

COMPILABLE: frozenset[int] = frozenset({*range(2, 17), FLOAT_BITS})
"""Widths the compiler can lower an operand to: integer grids of 2..16 bits, or float."""

DYNAMIC_BITS = 8
"""The activation width of a dynamic range: ``DynamicQuantizeLinear`` produces uint8."""

_TEXT = re.compile(r"w(\d+)a(\d+|dyn)")


class Bits(tuple):
    """A (weight bits, activation bits) choice, dynamic or not; ``str()`` gives ``"w4a8"`` or
    ``"w8adyn"``."""

    __slots__ = ()

    def __new__(cls, w: int, a: int, dynamic: bool = False) -> Bits:
        if dynamic and a != DYNAMIC_BITS:
            raise MpqcError(f"dynamic activations are {DYNAMIC_BITS}-bit, not {a}-bit")
        return super().__new__(cls, (w, a, True) if dynamic else (w, a))

    def __getnewargs__(self) -> tuple[int, int, bool]:
        return (self.w, self.a, self.dynamic)

    @property
    def w(self) -> int:
        return self[0]

    @property
    def a(self) -> int:
        return self[1]

    @property
    def dynamic(self) -> bool:
        """Whether the activation range is measured on every run."""
        return len(self) > 2

    @classmethod
    def of(cls, choice: tuple) -> Bits:
        """A choice given as a plain tuple (``(8, 8)``, ``(8, 8, True)``) as ``Bits``."""
        return cls(int(choice[0]), int(choice[1]), bool(len(choice) > 2 and choice[2]))

    @classmethod
    def parse(cls, text: str, widths: Container[int] | None = COMPILABLE) -> Bits:
        """``"w4a8"`` -> ``Bits(4, 8)``, ``"w8adyn"`` -> ``Bits(8, 8, dynamic=True)``; an
        ``MpqcError`` naming the expected form otherwise.

        Case and surrounding blanks are forgiven (users type ``W8A8``). ``widths`` is the set each
        operand must fall in: by default what the compiler can lower; ``None`` accepts any
        positive width (a hardware spec may describe 1-bit pairs mpqc never emits).
        """
        match = _TEXT.fullmatch(text.strip().lower())
        if not match:
            raise MpqcError(f"'{text}' is not a bit choice like w8a8, w4a8 or w8adyn")
        dynamic = match.group(2) == "dyn"
        bits = cls(int(match.group(1)), DYNAMIC_BITS if dynamic else int(match.group(2)), dynamic)
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

    @property
    def activation_key(self) -> str:
        """The activation part of the spelling (``a8``, ``adyn``): how sensitivity scores name an
        activation candidate."""
        return "adyn" if self.dynamic else f"a{self.a}"

    def __str__(self) -> str:
        return f"w{self.w}{self.activation_key}"

    def __repr__(self) -> str:
        return f"Bits({self.w}, {self.a}{', dynamic=True' if self.dynamic else ''})"

    def text(self) -> str:
        """How messages name the choice: ``w8a8``, or ``w8 (activations float)`` for weights
        quantized alone (``w8a32`` would read as 32-bit integer activations)."""
        return f"w{self.w} (activations float)" if self.float_activations else str(self)
