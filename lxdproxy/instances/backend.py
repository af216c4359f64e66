"""The seam between the API and wherever instances come from (local store or a real LXD)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lxdproxy.instances.model import Instance

InstanceChanged = Callable[[str], Awaitable[None]]


class InstanceBackend(Protocol):
    """Local backend (embedded default) and LXD backend (pylxd) both implement this.

    Records are LXD instance objects (dicts shaped like ``GET /1.0/instances/<n>`` metadata) as the
    backend knows them: for the LXD backend they come from the real LXD and hold no shim-owned
    proxy devices; the API merges those in.
    """

    kind: str  # "local" | "lxd"

    async def list_names(self) -> list[str]: ...

    async def get_record(self, name: str) -> dict[str, Any]:
        """LXD instance object; raises NotFoundError("Instance not found")."""

    async def get_instance(self, name: str) -> Instance:
        """Runtime view: type, status, init pid or netns, NICs from expanded devices."""

    async def get_state(self, name: str) -> dict[str, Any]:
        """LXD ``/state`` metadata (status, status_code, pid, network, ...)."""

    async def create(self, body: dict[str, Any]) -> None:
        """Register an instance (local) or raise NotSupportedError (lxd)."""

    async def delete(self, name: str) -> None: ...

    async def update_record(self, name: str, record: dict[str, Any]) -> None:
        """Store backend-owned writable fields (config, non-proxy devices, ...)."""

    def watch(self, callback: InstanceChanged) -> None:
        """Call ``callback(name)`` whenever an instance's pid/status/NICs change."""

    async def close(self) -> None: ...
