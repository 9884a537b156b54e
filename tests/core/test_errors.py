"""One error base: every layer's "bad input" is an ``MpqcError`` that may name its option field."""

from __future__ import annotations

import pytest

from mpqc.core.errors import MpqcError, UsageError
from mpqc.hwspecs import SpecError
from mpqc.ir import ModelError
from mpqc.passes import DataError, PassInputError
from mpqc.report import ReportFormatError
from mpqc.search import InfeasibleError, SearchError


@pytest.mark.parametrize(
    "error",
    [
        SpecError,
        ModelError,
        PassInputError,
        DataError,
        SearchError,
        InfeasibleError,
        UsageError,
        ReportFormatError,
    ],
)
def test_every_layer_s_input_error_derives_from_the_base(error: type) -> None:
    assert issubclass(error, MpqcError) and issubclass(error, ValueError)


def test_an_error_names_its_field_and_keeps_the_bare_message() -> None:
    error = PassInputError("'0.3q' is not a ratio", field="max_size")
    assert (error.field, error.message) == ("max_size", "'0.3q' is not a ratio")
    assert str(error) == "max_size: '0.3q' is not a ratio"
    assert str(PassInputError("no field")) == "no field" and PassInputError("x").field is None


def test_a_spec_error_keeps_its_yaml_path_apart_from_the_option_field() -> None:
    error = SpecError("chip.yaml", "precisions.w4a8", "must be positive")
    assert error.spec_field == "precisions.w4a8" and error.field is None
    assert str(error) == "chip.yaml: precisions.w4a8: must be positive"
