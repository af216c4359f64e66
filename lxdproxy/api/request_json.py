"""Request bodies: JSON decoding with Go ``encoding/json`` wording, and LXD's typed fields.

LXD decodes bodies into Go structs, so clients see Go's messages
(``invalid character 'n' looking for beginning of object key string``, captured in
fixtures/rest/patch-invalid-json.json). Python's decoder reports the position of the problem;
we map the common cases onto Go's text from the character found there.
"""

from __future__ import annotations

import json
from typing import Any

from lxdproxy.errors import LxdError


def _go_quote_char(ch: str) -> str:
    # Go's quoteChar: '\'' and '"' specially, otherwise strconv.Quote with single quotes.
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    quoted = json.dumps(ch)[1:-1] if not ch.isprintable() else ch
    return f"'{quoted}'"


def _container_at(text: str, pos: int) -> str | None:
    """The innermost open container ('{' or '[') at ``pos``, skipping strings."""
    stack: list[str] = []
    in_string = False
    escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
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
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LxdError(go_json_error(text, exc), 400) from None
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
