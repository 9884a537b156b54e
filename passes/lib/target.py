"""Target rules that change the numbers, not just the costs: one place, used by lowering and
evaluation.

A spec may say that a pair's integer kernel cannot take the full weight grid (x86 CPUs without VNNI
sum pairs of u8 x s8 products into a saturating int16). Then layers of that pair are lowered on the
narrower grid, and the evaluator must simulate the same grid, or what the search measured is not
what ships. The chosen bits (``mpqc.bits``) stay what was asked for: the narrowing is a property of
the target, reported, not a different choice.
"""

from __future__ import annotations

from typing import Any

from mpqc.core.bits import FLOAT_BITS

__all__ = ["weight_grid_bits"]


def weight_grid_bits(spec: Any, wbits: int, abits: int) -> int:
    """Bits of the grid that (wbits, abits) weights are rounded to on ``spec`` (None: no spec)."""
    if (
        spec is None
        or wbits == FLOAT_BITS
        or abits == FLOAT_BITS
        or not spec.supports(wbits, abits)
    ):
        return wbits
    narrowed = spec.precision(wbits, abits).weight_grid_bits
    return wbits if narrowed is None else min(wbits, narrowed)
