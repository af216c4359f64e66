"""Go strconv ports: %q quoting and ParseInt/ParseUint error texts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxdproxy.config.gostrconv import GoNumError, go_parse_int, go_parse_uint, go_quote


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("", '""'),
        ("abc", '"abc"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
        ("\x00\x1f\x7f", '"\\x00\\x1f\\x7f"'),
        ("é日本", '"é日本"'),
        ("\u00a0\u200b", '"\\u00a0\\u200b"'),
        ("\U000e0001", '"\\U000e0001"'),
        ("\udcff", '"\\xff"'),  # a surrogateescape'd raw byte, as Go prints invalid UTF-8
        ("\ud800", '"\ufffd"'),
        ("'", "\"'\""),
    ],
)
def test_go_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("+5", 5), ("-5", -5), ("007", 7), ("9223372036854775807", 2**63 - 1)],
)
def test_parse_int_ok(text: str, value: int) -> None:
    assert go_parse_int(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'strconv.ParseInt: parsing "": invalid syntax'),
        ("+", 'strconv.ParseInt: parsing "+": invalid syntax'),
        ("0x10", 'strconv.ParseInt: parsing "0x10": invalid syntax'),
        ("1e3", 'strconv.ParseInt: parsing "1e3": invalid syntax'),
        ("9223372036854775808", 'strconv.ParseInt: parsing "9223372036854775808": value out of range'),
        ("-9223372036854775808", None),
        ("-9223372036854775809", 'strconv.ParseInt: parsing "-9223372036854775809": value out of range'),
        ("18446744073709551616", 'strconv.ParseInt: parsing "18446744073709551616": value out of range'),
    ],
)
def test_parse_int_errors(text: str, message: str | None) -> None:
    if message is None:
        assert go_parse_int(text) == -(2**63)
        return
    with pytest.raises(GoNumError) as info:
        go_parse_int(text)
    assert str(info.value) == message


def test_parse_uint_bases() -> None:
    assert go_parse_uint("4294967295", 10, 32) == 2**32 - 1
    assert go_parse_uint("0644", 8, 32) == 0o644
    for bad, base in [("4294967296", 10), ("+1", 10), ("8", 8), ("", 8), ("1_0", 10)]:
        with pytest.raises(GoNumError):
            go_parse_uint(bad, base, 32)


@given(st.integers(0, 2**63 - 1))
def test_parse_int_round_trip(n: int) -> None:
    assert go_parse_int(str(n)) == n


@given(st.text())
def test_parse_int_never_crashes(text: str) -> None:
    try:
        go_parse_int(text)
    except GoNumError as exc:
        assert str(exc).startswith("strconv.ParseInt: parsing ")
