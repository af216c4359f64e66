"""``GET /1.0/instances?filter=``: the subset of LXD's filter language (extension
``api_filtering``) that ``lxc list`` sends: ``<field> eq|ne <value>`` clauses joined by ``and``.

Fields: top-level string fields of the instance object (name, status, type, ...), and
``config.<key>`` / ``expanded_config.<key>``. Anything else (``or``, ``not``, parentheses, other
fields) is a clear 400 rather than a silently wrong answer. Pure.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from lxdproxy.errors import LxdError

_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Clause:
    field: str
    negate: bool
    value: str

    def matches(self, record: dict[str, Any]) -> bool:
        head, _, rest = self.field.partition(".")
        if rest and head in ("config", "expanded_config"):
            actual = record.get(head, {}).get(rest)
        elif not rest and isinstance(record.get(head), str):
            actual = record[head]
        else:
            actual = None
        # lxc lowercases values such as status=running; LXD compares those case-insensitively.
        equal = actual is not None and str(actual).lower() == self.value.lower()
        return equal != self.negate


def parse_filter(text: str) -> tuple[Clause, ...]:
    text = text.strip()
    if not text:
        return ()
    clauses = []
    for part in _AND.split(text):
        try:
            tokens = shlex.split(part)
        except ValueError:
            tokens = []
        if len(tokens) != 3 or tokens[1].lower() not in ("eq", "ne") or "(" in part:
            raise LxdError(f'Unsupported filter "{part}": lxdproxy understands '
                           '"<field> eq|ne <value>" clauses joined by "and"', 400)
        clauses.append(Clause(tokens[0], tokens[1].lower() == "ne", tokens[2]))
    return tuple(clauses)


def matches(clauses: tuple[Clause, ...], record: dict[str, Any]) -> bool:
    return all(c.matches(record) for c in clauses)
