"""Ports of the bits of Go's ``strconv`` whose behaviour (and error text) LXD shows to users.

LXD formats user input with ``%q`` (``strconv.Quote``) and surfaces ``strconv.ParseInt`` errors
verbatim (e.g. ``strconv.ParseInt: parsing "": invalid syntax``), so we reproduce them byte for
byte instead of using Python's ``repr``/``int`` (which accept ``_``, spaces and Unicode digits).
"""

from __future__ import annotations

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

_SIMPLE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_quote(text: str) -> str:
    """``strconv.Quote`` (what Go's ``%q`` prints for a string).

    Python strings are text, Go strings are bytes: characters U+DC80..U+DCFF are taken as the
    raw bytes that ``surrogateescape`` decoding produced (Go prints invalid UTF-8 as ``\\xNN``);
    any other lone surrogate is what Go's JSON decoder would have turned into U+FFFD.
    Printability follows Python's Unicode tables (Go 1.19 uses an older Unicode version; only
    characters assigned since then can differ).
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        elif ch.isprintable():
            out.append(ch)
        elif ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


class GoNumError(ValueError):
    """A ``*strconv.NumError``; ``str()`` is Go's exact ``Error()`` text."""

    def __init__(self, func: str, num: str, reason: str) -> None:
        self.func = func
        self.num = num
        self.reason = reason
        super().__init__(f"strconv.{func}: parsing {go_quote(num)}: {reason}")


_SYNTAX = "invalid syntax"
_RANGE = "value out of range"


def _parse_uint_digits(s: str, base: int, bit_size: int) -> tuple[int, str | None]:
    """Go's ``ParseUint`` loop for an explicit base: (value, None) or (_, error reason).

    Like Go, overflow is reported as soon as it happens, even if a bad character follows.
    """
    if s == "":
        return 0, _SYNTAX
    max_val = (1 << bit_size) - 1
    n = 0
    for ch in s:
        d = _DIGITS.find(ch.lower()) if ch.isascii() else -1
        if d < 0 or d >= base:
            return 0, _SYNTAX
        n = n * base + d
        if n > max_val:
            return max_val, _RANGE
    return n, None


def go_parse_uint(s: str, base: int = 10, bit_size: int = 64) -> int:
    """``strconv.ParseUint(s, base, bitSize)`` for base 2..36: no sign, no prefix, no ``_``."""
    value, reason = _parse_uint_digits(s, base, bit_size)
    if reason is not None:
        raise GoNumError("ParseUint", s, reason)
    return value


def go_parse_int(s: str, base: int = 10, bit_size: int = 64) -> int:
    """``strconv.ParseInt(s, base, bitSize)``: optional leading ``+``/``-``, then ParseUint."""
    if s == "":
        raise GoNumError("ParseInt", s, _SYNTAX)
    body, neg = s, False
    if s[0] == "+":
        body = s[1:]
    elif s[0] == "-":
        body, neg = s[1:], True
    un, reason = _parse_uint_digits(body, base, 64)
    if reason == _SYNTAX:
        raise GoNumError("ParseInt", s, _SYNTAX)
    cutoff = 1 << (bit_size - 1)
    if reason == _RANGE or (not neg and un >= cutoff) or (neg and un > cutoff):
        raise GoNumError("ParseInt", s, _RANGE)
    return -un if neg else un


__all__ = ["GoNumError", "go_parse_int", "go_parse_uint", "go_quote"]
