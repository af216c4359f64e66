"""Paths no proxy device may listen on: the daemon's own API socket and state directory
(issue 12: ``listen=unix:<the API socket>`` locked the API out until a restart).

Held as (st_dev, st_ino) of directories, so the namespace helper can compare them inside
whatever mount namespace it binds in: an instance that sees the host's state directory (a
shared or bind-mounted tree) is refused as well, whatever path it uses to reach it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Identity = tuple[int, int]


def _identity(path: Path) -> Identity:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class ProtectedPaths:
    dirs: tuple[Identity, ...] = ()  # no listen path inside these (at any depth)
    entries: tuple[tuple[Identity, str], ...] = ()  # (parent directory, name): these exact files

    @classmethod
    def of_daemon(cls, state_dir: Path, api_socket: Path) -> ProtectedPaths:
        """Both must exist (the socket's directory, not the socket: it is made later)."""
        return cls(dirs=(_identity(state_dir),),
                   entries=((_identity(api_socket.parent), api_socket.name),))

    def to_request(self) -> dict[str, Any]:
        return {"dirs": [list(d) for d in self.dirs],
                "entries": [[list(d), name] for d, name in self.entries]}
