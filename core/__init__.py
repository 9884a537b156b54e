"""The vocabulary every layer shares: bit-width choices and the error base.

The lowest layer: pure Python, importing nothing of mpqc, so ``ir``, ``hwspecs``, ``search``,
``passes`` and the front all speak of "w4a8" and of a user's mistake in the same terms.
"""

from mpqc.core.bits import FLOAT_BITS, Bits
from mpqc.core.errors import MpqcError, UsageError

__all__ = ["FLOAT_BITS", "Bits", "MpqcError", "UsageError"]
