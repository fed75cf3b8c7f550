"""kubeapi.strconv parses integers as Go's strconv does, whatever the length of the input."""

from __future__ import annotations

import pytest

from kubeapi.rv import InvalidResourceVersion, parse_rv
from kubeapi.strconv import NumError, parse_int, parse_uint


@pytest.mark.parametrize("parse", [parse_int, parse_uint])
def test_thousands_of_digits_are_out_of_range_not_an_interpreter_error(parse: object) -> None:
    assert callable(parse)
    with pytest.raises(NumError, match="value out of range"):
        parse("9" * 5000)
    assert parse("0" * 5000 + "7") == 7  # leading zeros are not significant, as in Go


def test_a_resource_version_of_thousands_of_digits_is_invalid() -> None:
    with pytest.raises(InvalidResourceVersion, match="out of range"):
        parse_rv("9" * 5000)
    assert parse_int("-" + "0" * 30 + "9223372036854775808") == -(1 << 63)


@pytest.mark.parametrize("text", ["0", "007", "1", "9" * 19, "1" + "0" * 19, "18446744073709551615",
                                  "18446744073709551616", "", "+1", " 1", "1 ", "1_0", "\u0663", "\u00b9", "12a"])
def test_a_resource_version_parses_as_go_parseuint_whatever_its_length(text: str) -> None:
    """Short all-digit RVs take a fast path; it must agree with the full parser everywhere."""
    try:
        expected: int | None = parse_uint(text)
    except NumError:
        expected = None
    if expected is None:
        with pytest.raises(InvalidResourceVersion):
            parse_rv(text)
    else:
        assert parse_rv(text) == expected
