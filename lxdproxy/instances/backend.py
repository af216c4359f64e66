"""The seam between the device manager and wherever instances come from (local store or a real LXD).

Everything the manager needs is declared here and implemented by both backends; the differences
between them (who owns which devices, whether instances can be created or stopped) live in the
backends, never in ``if backend.kind`` branches above them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lxdproxy.instances.address_follow import AddressChanged, AddressFollower
from lxdproxy.instances.model import Devices, Instance, InstanceUpdate, Nic

InstanceChanged = Callable[[str], Awaitable[None]]


class InstanceBackend(Protocol):
    """Local backend (embedded default) and LXD backend (pylxd) both implement this.

    Records are LXD instance objects (dicts shaped like ``GET /1.0/instances/<n>`` metadata),
    complete with the proxy devices lxdproxy realises.
    """

    kind: str  # "local" | "lxd": reported in GET /1.0 only

    async def list_names(self) -> list[str]: ...

    async def managed_names(self) -> list[str]:
        """Instances that may have devices for lxdproxy to realise (reconcile walks these)."""

    async def get_record(self, name: str) -> dict[str, Any]:
        """LXD instance object; raises NotFoundError("Instance not found")."""

    async def get_instance(self, name: str) -> Instance:
        """Runtime view: type, status, init pid or netns, NICs from expanded devices."""

    async def get_state(self, name: str) -> dict[str, Any]:
        """LXD ``/state`` metadata (status, status_code, pid, network, ...)."""

    async def stored_devices(self, name: str) -> Devices:
        """The devices lxdproxy realises for the instance, as stored (proxies among others)."""

    async def network_forward_listen_addresses(self) -> tuple[str, ...]:
        """Listen addresses of network forwards (a proxy may not reuse them); () if none."""

    async def create(self, body: dict[str, Any]) -> None:
        """Register an instance (local) or raise NotSupportedError (lxd)."""

    async def delete(self, name: str) -> None: ...

    async def preview(self, name: str, update: InstanceUpdate) -> Instance:
        """The runtime view the instance would have after ``update``; raises (ConfigError, ...)
        when the backend would refuse it. Called before any device is touched."""

    async def save(self, name: str, update: InstanceUpdate) -> None:
        """Persist ``update`` (already previewed). Does not report the change to ``watch``
        callbacks: the manager applied it itself."""

    async def set_stopped(self, name: str, stopped: bool) -> None:
        """lxdproxy-level power state (``lxc stop``/``start``); NotSupportedError where the
        backend does not own the instance's lifecycle."""

    async def follow_address(self, instance: Instance, nic: Nic, version: int,
                             changed: AddressChanged) -> AddressFollower:
        """Follow the IPv``version`` address ``nic`` has now (``user.lxdproxy.nat_dynamic``):
        the follower's ``current`` is the address at return (None: none yet); ``changed`` is
        awaited with every new one (None: it went away) until the follower is closed."""

    def watch(self, callback: InstanceChanged) -> None:
        """Call ``callback(name)`` whenever an instance's pid/status/NICs change by themselves."""

    async def close(self) -> None: ...
