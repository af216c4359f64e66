"""Which namespaces a side of a proxy device lives in, as nsfs paths."""

from __future__ import annotations

import os
from dataclasses import dataclass

NETNS_RUN_DIR = "/run/netns"


def ns_identity(path: str) -> tuple[int, int]:
    """(device, inode) of an nsfs file: equal identities mean the same namespace."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def own_ns_path(kind: str) -> str:
    # The thread-group leader's namespaces: worker threads that setns() do not change these.
    return f"/proc/{os.getpid()}/ns/{kind}"


def _if_foreign(path: str, kind: str) -> str | None:
    """``path`` unless it is the daemon's own namespace of that kind (then None)."""
    try:
        if ns_identity(path) == ns_identity(own_ns_path(kind)):
            return None
    except FileNotFoundError:
        raise
    return path


@dataclass(frozen=True)
class Namespaces:
    """nsfs paths of one side of a device. ``mnt``/``user`` None = the daemon's own."""

    net: str
    mnt: str | None = None
    user: str | None = None
    pid: int | None = None

    @classmethod
    def current(cls) -> Namespaces:
        return cls(net=own_ns_path("net"))

    @classmethod
    def of_pid(cls, pid: int) -> Namespaces:
        base = f"/proc/{pid}/ns"
        if not os.path.exists(f"{base}/net"):
            raise ProcessLookupError(f"No process with PID {pid}")
        return cls(
            net=f"{base}/net",
            mnt=_if_foreign(f"{base}/mnt", "mnt"),
            user=_if_foreign(f"{base}/user", "user"),
            pid=pid,
        )

    @classmethod
    def of_netns(cls, name_or_path: str) -> Namespaces:
        path = name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Network namespace {name_or_path!r} not found")
        return cls(net=path)

    def is_current_net(self) -> bool:
        """Whether ``net`` is this process's own network namespace."""
        return ns_identity(self.net) == ns_identity(own_ns_path("net"))
