"""Log lines that a request cannot forge: control characters in a message are escaped.

Names, paths and addresses that reach a log line come from clients. A raw newline in one
would start a line of the client's choosing in the daemon's log (issue 12: a device named
``a\\nb``). The formatter escapes every control character of the message itself; the
traceback that ``log.exception`` appends keeps its own line breaks.
"""

from __future__ import annotations

import logging
import unicodedata

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control(text: str) -> str:
    """``text`` with every control, format or line/paragraph separator character escaped
    (``\\n``, ``\\x1b``, ``\\u2028``); printable text is unchanged."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif unicodedata.category(ch) in ("Zs",):
            out.append(ch)  # non-breaking and other spaces are harmless
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


class EscapingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose message part never spans more than one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return escape_control(super().formatMessage(record))
