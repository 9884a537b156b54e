"""``Bits``: the one spelling of a bit choice, parsed and printed the same way everywhere."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpqc.core.bits import COMPILABLE, FLOAT_BITS, Bits
from mpqc.core.errors import MpqcError

widths = st.sampled_from(sorted(COMPILABLE))


@given(widths, widths)
def test_printing_then_parsing_gives_the_same_choice(w: int, a: int) -> None:
    bits = Bits(w, a)
    assert Bits.parse(str(bits)) == bits
    assert str(Bits.parse(str(bits))) == f"w{w}a{a}"


@given(widths, widths, widths, widths)
def test_choices_order_weights_first_like_tuples(w1: int, a1: int, w2: int, a2: int) -> None:
    assert (Bits(w1, a1) < Bits(w2, a2)) == ((w1, a1) < (w2, a2))


def test_float_is_a_width() -> None:
    weight_only = Bits.parse("w4a32")
    assert weight_only == (4, FLOAT_BITS) and weight_only.float_activations
    assert not weight_only.float_weights and str(weight_only) == "w4a32"


def test_users_may_type_capitals_and_blanks() -> None:
    assert Bits.parse(" W8A16 ") == Bits(8, 16)


@pytest.mark.parametrize(
    "text, message",
    [
        ("w4", "not a bit choice like w8a8"),
        ("4a8", "not a bit choice like w8a8"),
        ("wfa8", "not a bit choice like w8a8"),
        ("w1a8", "weight bits 1 in 'w1a8' are outside 2..16"),
        ("w8a17", "activation bits 17 in 'w8a17' are outside 2..16"),
    ],
)
def test_what_the_compiler_cannot_lower_is_refused(text: str, message: str) -> None:
    with pytest.raises(MpqcError, match=message):
        Bits.parse(text)


def test_a_spec_may_name_widths_the_compiler_never_emits() -> None:
    assert Bits.parse("w1a1", widths=None) == Bits(1, 1)
    with pytest.raises(MpqcError):
        Bits.parse("w0a8", widths=None)


def test_a_dynamic_range_is_spelled_adyn_and_differs_from_the_static_pair() -> None:
    dynamic = Bits.parse("W8ADYN")
    assert dynamic == (8, 8, True) and dynamic.dynamic and str(dynamic) == "w8adyn"
    assert dynamic != Bits(8, 8) and Bits(8, 8) == (8, 8) and not Bits(8, 8).dynamic
    assert Bits.of((8, 8, True)) == dynamic and dynamic.activation_key == "adyn"
    w, a = Bits(4, 8)  # a static choice unpacks as a pair
    assert (w, a) == (4, 8)
    with pytest.raises(MpqcError, match="dynamic activations are 8-bit"):
        Bits(8, 16, dynamic=True)


def test_choices_travel_to_worker_processes() -> None:
    import pickle

    for bits in (Bits(8, 8, dynamic=True), Bits(4, 8)):
        assert pickle.loads(pickle.dumps(bits)) == bits
        assert type(pickle.loads(pickle.dumps(bits))) is Bits
