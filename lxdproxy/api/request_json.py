"""Request bodies: JSON decoding with Go ``encoding/json`` wording, and LXD's typed fields.

LXD decodes bodies into Go structs, so clients see Go's messages
(``invalid character 'n' looking for beginning of object key string``, captured in
fixtures/rest/patch-invalid-json.json). Python's decoder reports the position of the problem;
we map the common cases onto Go's text from the character found there.

Hostile bodies get a 400 too, never a 500 (issue 12): ``NaN``/``Infinity`` are refused as Go
refuses them (Python's decoder accepts them), numbers are bounded in length (Python's ``int``
raises past 4,300 digits) and nesting in depth (the C decoder recurses: 100,000 levels raised
RecursionError). LXD's bodies are at most 3 levels deep; Go allows 10,000.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from lxdproxy.errors import LxdError

MAX_DEPTH = 64
MAX_NUMBER_CHARS = 64


class _HostileJson(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _go_quote_char(ch: str) -> str:
    # Go's quoteChar: '\'' and '"' specially, otherwise strconv.Quote with single quotes.
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    quoted = json.dumps(ch)[1:-1] if not ch.isprintable() else ch
    return f"'{quoted}'"


def _outside_strings(text: str) -> Iterator[tuple[int, str]]:
    """(position, character) of every character outside a JSON string, quotes excluded."""
    in_string = escaped = False
    for pos, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        else:
            yield pos, ch


def _container_at(text: str, pos: int) -> str | None:
    """The innermost open container ('{' or '[') at ``pos``, skipping strings."""
    stack: list[str] = []
    for _, ch in _outside_strings(text[:pos]):
        if ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else None


def go_json_error(text: str, exc: json.JSONDecodeError) -> str:
    pos = exc.pos
    if pos >= len(text) or exc.msg.startswith("Unterminated string"):
        return "unexpected end of JSON input"
    ch = _go_quote_char(text[pos])
    msg = exc.msg
    if msg.startswith("Expecting property name"):
        return f"invalid character {ch} looking for beginning of object key string"
    if msg.startswith("Expecting value"):
        return f"invalid character {ch} looking for beginning of value"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {ch} after object key"
    if msg.startswith("Expecting ','"):
        if _container_at(text, pos) == "[":
            return f"invalid character {ch} after array element"
        return f"invalid character {ch} after object key:value pair"
    if msg.startswith("Extra data"):
        return f"invalid character {ch} after top-level value"
    if msg.startswith("Invalid control character"):
        return f"invalid character {ch} in string literal"
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        return f"invalid character {ch} in string escape code"
    return f"invalid JSON: {msg} at offset {pos}"


_CONSTANT = "constant"
_DEPTH_ERROR = "exceeded max depth"  # Go's scanner's own words (at 10,000 levels there)


def _refuse_constant(name: str) -> Any:
    raise _HostileJson(_CONSTANT)


def _too_long(text: str) -> _HostileJson:
    return _HostileJson(f"json: cannot unmarshal number {text[:16]}... ({len(text)} characters) "
                        "into Go value of type float64")


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _too_long(text)
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _too_long(text)
    return float(text)


def _constant_error(text: str) -> str:
    """Go's error for the first ``NaN``/``Infinity``/``-Infinity`` outside a string."""
    for pos, ch in _outside_strings(text):
        if ch in "NI":
            where = "in numeric literal" if pos and text[pos - 1] == "-" else \
                "looking for beginning of value"
            return f"invalid character {_go_quote_char(ch)} {where}"
    return "invalid character looking for beginning of value"


def _depth(value: Any) -> int:
    """Nesting depth of a decoded value, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            return level
        stack.extend((child, level + 1) for child in children)
    return deepest


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def decode_object(raw: bytes, struct: str = "api.InstancePut") -> dict[str, Any]:
    """Decode a JSON object body; a 400 LxdError with Go's wording otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LxdError(f"invalid UTF-8 in request body at offset {exc.start}", 400) from None
    if not text.strip():
        # Go's Decoder on an empty body.
        raise LxdError("EOF", 400)
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int,
                           parse_float=_bounded_float)
    except json.JSONDecodeError as exc:
        raise LxdError(go_json_error(text, exc), 400) from None
    except _HostileJson as exc:
        if exc.message == _CONSTANT:
            raise LxdError(_constant_error(text), 400) from None
        raise LxdError(exc.message, 400) from None
    except RecursionError:
        raise LxdError(_DEPTH_ERROR, 400) from None
    if _depth(value) > MAX_DEPTH:
        raise LxdError(_DEPTH_ERROR, 400)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LxdError(f"json: cannot unmarshal {_go_type(value)} into Go value of type {struct}",
                       400)
    return value


def string_map(value: Any, field: str, struct: str = "InstancePut") -> dict[str, str]:
    """A ``map[string]string`` field (``config``); ``null`` is an empty map, as in Go."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LxdError(f"json: cannot unmarshal {_go_type(value)} into Go struct field "
                       f"{struct}.{field} of type map[string]string", 400)
    for v in value.values():
        if not isinstance(v, str):
            raise LxdError(f"json: cannot unmarshal {_go_type(v)} into Go struct field "
                           f"{struct}.{field} of type string", 400)
    return dict(value)


def device_map(value: Any, *, allow_null_devices: bool = False,
               struct: str = "InstancePut") -> dict[str, dict[str, str] | None]:
    """``devices``: ``map[string]map[string]string``. Every value must be a string (LXD rejects
    ``"nat": true`` while decoding). With ``allow_null_devices`` (PATCH), ``"dev": null`` is kept
    as None, meaning delete."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LxdError(f"json: cannot unmarshal {_go_type(value)} into Go struct field "
                       f"{struct}.devices of type map[string]map[string]string", 400)
    out: dict[str, dict[str, str] | None] = {}
    for name, dev in value.items():
        if dev is None and allow_null_devices:
            out[name] = None
            continue
        if dev is None:
            out[name] = {}
            continue
        out[name] = string_map(dev, "devices", struct) if isinstance(dev, dict) else _bad_dev(dev,
                                                                                              struct)
    return out


def _bad_dev(dev: Any, struct: str) -> dict[str, str]:
    raise LxdError(f"json: cannot unmarshal {_go_type(dev)} into Go struct field "
                   f"{struct}.devices of type map[string]string", 400)
