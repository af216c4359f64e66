"""The LXD backend: instances come from a real LXD, reached with pylxd.

pylxd is synchronous (requests), so every call runs in a worker thread (``asyncio.to_thread``)
and the daemon's event loop never blocks on LXD. Records are LXD's raw JSON (``metadata`` of
``GET /1.0/instances/<n>``) so the API can serve them with LXD's exact shape; the API merges the
proxy devices lxdproxy owns (kept in our own store) merged in.

lxdproxy never writes to the real LXD: instance lifecycle (create/delete) and every change that
is not a proxy device stays with ``lxc``/LXD itself.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from pylxd import Client, exceptions

from lxdproxy.config.model import InstanceType
from lxdproxy.errors import ConfigError, LxdError, NotFoundError, NotSupportedError
from lxdproxy.instances.address_follow import (
    AddressChanged,
    AddressFollower,
    IPAddress,
    StatePoller,
    address_from_state,
)
from lxdproxy.instances.backend import InstanceChanged
from lxdproxy.instances.model import Devices, Instance, InstanceUpdate, Nic
from lxdproxy.store import Store

log = logging.getLogger(__name__)

# The writable part of an instance (LXD's InstancePut minus "restore", which is an action).

# LXD network type -> the NIC "nictype" it implies (a managed bridge gives a bridged NIC).
NETWORK_NICTYPES = {
    "bridge": "bridged",
    "macvlan": "macvlan",
    "sriov": "sriov",
    "ovn": "ovn",
    "physical": "physical",
}

ONLY_PROXY_DEVICES = "Only proxy devices can be changed through lxdproxy"
DEFAULT_POLL_INTERVAL = 2.0
# user.lxdproxy.nat_dynamic: how often the state's addresses are read (rules follow within it).
DEFAULT_ADDRESS_POLL_INTERVAL = 1.0
DEFAULT_TIMEOUT = 30.0
_NETWORK_CACHE_SECONDS = 60.0


def _name_url(name: str) -> str:
    # Instance names come from request paths: never let one add a path segment or a query.
    return quote(name, safe="")


def _proxy_devices(devices: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in devices.items() if isinstance(v, Mapping) and v.get("type") == "proxy"}


def _non_proxy_devices(devices: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (devices or {}).items()
            if not (isinstance(v, Mapping) and v.get("type") == "proxy")}


def _expanded_config(record: Mapping[str, Any]) -> Mapping[str, str]:
    # volatile.* keys are local config, which expanded_config (profiles + local) includes.
    if "expanded_config" in record:
        return record["expanded_config"] or {}
    return record.get("config") or {}


def instance_fingerprint(record: Mapping[str, Any], state: Mapping[str, Any] | None) -> tuple:
    """What the watcher compares between polls: a change means devices must follow.

    Status, the init PID (a restart gives a new one) and the NIC config (static IPs, host veth).
    """
    pid = (state or {}).get("pid") or 0
    status = record.get("status", "")
    nics = tuple(sorted(
        (name, tuple(sorted(dev.items())))
        for name, dev in (record.get("expanded_devices") or {}).items()
        if isinstance(dev, Mapping) and dev.get("type") == "nic"
    ))
    volatile = tuple(sorted(
        (k, v) for k, v in _expanded_config(record).items()
        if k.startswith("volatile.") and k.endswith(".host_name")
    ))
    return (status, pid, record.get("type", ""), nics, volatile)


class LxdBackend:
    """InstanceBackend over a real LXD (``endpoint``: a unix socket path or an https/http URL).

    For https, pylxd picks the client certificate from ``~/.config/lxc/client.{crt,key}`` (or the
    snap's) and pins ``servercerts/<host>.crt`` when present, exactly like ``lxc`` remotes.
    """

    kind = "lxd"

    def __init__(self, endpoint: str, store: Store, *,
                 poll_interval: float = DEFAULT_POLL_INTERVAL,
                 address_poll_interval: float = DEFAULT_ADDRESS_POLL_INTERVAL,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self._store = store
        self.poll_interval = poll_interval
        self.address_poll_interval = address_poll_interval
        self.timeout = timeout
        self._client: Client | None = None
        self._connect_lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        self._network_types: dict[str, tuple[float, str]] = {}
        self._last_poll_error: str | None = None

    # -- plumbing -----------------------------------------------------------------------------

    def _connect_sync(self) -> Client:
        endpoint = self.endpoint
        if endpoint.startswith("/") and not os.path.exists(endpoint):
            # pylxd would silently treat a missing path as a URL and fail obscurely.
            raise LxdError(f"LXD socket {endpoint} does not exist", 503)
        try:
            return Client(endpoint=endpoint, timeout=self.timeout)
        except exceptions.ClientConnectionFailed as exc:
            raise LxdError(f"Failed to connect to LXD at {endpoint}: {exc}", 503) from exc
        except exceptions.LXDAPIException as exc:
            raise LxdError(f"LXD at {endpoint} refused the connection: {exc}", 503) from exc
        except OSError as exc:
            raise LxdError(f"Failed to connect to LXD at {endpoint}: {exc}", 503) from exc

    async def _api(self) -> Any:
        if self._client is None:
            async with self._connect_lock:
                if self._client is None:
                    self._client = await asyncio.to_thread(self._connect_sync)
        return self._client.api

    async def _get(self, path: str, **params: Any) -> Any:
        """GET ``/1.0/<path>`` on the real LXD; returns ``metadata``. LXD errors keep their text."""
        api = await self._api()

        def call() -> Any:
            node = api
            for segment in path.split("/"):
                node = node[segment]
            try:
                return node.get(params=params or None).json()["metadata"]
            except exceptions.NotFound as exc:
                raise NotFoundError(str(exc)) from exc
            except exceptions.LXDAPIException as exc:
                raise LxdError(str(exc), exc.response.status_code) from exc
            except OSError as exc:  # requests' ConnectionError is an OSError
                raise LxdError(f"Failed to talk to LXD at {self.endpoint}: {exc}", 503) from exc

        return await asyncio.to_thread(call)

    # -- InstanceBackend ----------------------------------------------------------------------

    async def list_names(self) -> list[str]:
        urls = await self._get("instances")
        # URLs may carry "?project=<p>" (non-default projects): the name is the last segment.
        return [url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] for url in urls]

    async def get_record(self, name: str) -> dict[str, Any]:
        """LXD's record with the proxy devices lxdproxy owns merged in (they win on a clash)."""
        record = await self._lxd_record(name)
        owned = _proxy_devices(self._store.get_devices(name))
        record["devices"] = {**(record.get("devices") or {}), **owned}
        record["expanded_devices"] = {**(record.get("expanded_devices") or {}),
                                      **copy.deepcopy(owned)}
        return record

    async def _lxd_record(self, name: str) -> dict[str, Any]:
        return await self._get(f"instances/{_name_url(name)}")

    async def stored_devices(self, name: str) -> Devices:
        return _proxy_devices(self._store.get_devices(name))

    async def managed_names(self) -> list[str]:
        owned = set(self._store.device_instances())
        return [n for n in await self.list_names() if n in owned]

    async def follow_address(self, instance: Instance, nic: Nic, version: int,
                             changed: AddressChanged) -> AddressFollower:
        """Poll the instance state's addresses (LXD reads them from inside the instance)."""

        async def read() -> IPAddress | None:
            state = await self.get_state(instance.name)
            return address_from_state(state.get("network"), nic.instance_ifname,
                                      nic.host_name, version)

        follower = StatePoller(read, self.address_poll_interval, changed)
        await follower.start()
        return follower

    async def get_state(self, name: str) -> dict[str, Any]:
        return await self._get(f"instances/{_name_url(name)}/state")

    async def get_instance(self, name: str) -> Instance:
        record = await self._lxd_record(name)
        state = await self.get_state(name)
        return await self._build_instance(record, state)

    async def create(self, body: dict[str, Any]) -> None:
        raise NotSupportedError("Creating instances is not supported with the LXD backend")

    async def delete(self, name: str) -> None:
        raise NotSupportedError("Deleting instances is not supported with the LXD backend")

    async def preview(self, name: str, update: InstanceUpdate) -> Instance:
        """Accept an update only if everything except proxy devices matches the real LXD.

        lxc and pylxd PUT the whole writable object back, so an unchanged record is the normal
        case. Forwarding other changes to LXD would make lxdproxy a second writer of LXD's
        state; instead the user gets a clear 400 and uses ``lxc`` against LXD directly.
        """
        current = await self._lxd_record(name)
        if (update.config != dict(current.get("config") or {})
                or _non_proxy_devices(update.devices) != _non_proxy_devices(current.get("devices"))
                or update.description != (current.get("description") or "")):
            raise ConfigError(ONLY_PROXY_DEVICES)
        return await self._build_instance(current, await self.get_state(name))

    async def save(self, name: str, update: InstanceUpdate) -> None:
        self._store.set_devices(name, _proxy_devices(update.devices))

    async def set_stopped(self, name: str, stopped: bool) -> None:
        raise NotSupportedError("Changing instance state is not supported by lxdproxy with "
                                "this backend")

    def watch(self, callback: InstanceChanged) -> None:
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch_loop(callback), name="lxd-backend-watch")

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except asyncio.CancelledError:
                pass
            self._watch_task = None
        if self._client is not None:
            self._client.api.session.close()
            self._client = None

    # -- extras -------------------------------------------------------------------------------

    async def network_forward_listen_addresses(self) -> tuple[str, ...]:
        """Every network forward listen address on the real LXD (for the forward-conflict rule).

        Best effort: networks whose driver has no forwards (LXD answers 400 for those) and an LXD
        without the ``network_forward`` extension contribute nothing. Errors talking to LXD
        propagate, so a caller can decide to skip the rule rather than silently pass.
        """
        await self._api()
        host_info = self._client.host_info if self._client else {}
        if "network_forward" not in host_info.get("api_extensions", []):
            return ()
        networks = await self._get("networks", recursion=1)
        found: list[str] = []
        for net in networks:
            if not net.get("managed") or net.get("type") not in ("bridge", "ovn"):
                continue
            try:
                forwards = await self._get(f"networks/{_name_url(net['name'])}/forwards",
                                           recursion=1)
            except LxdError as exc:
                if exc.status >= 500:
                    raise
                continue
            for fwd in forwards or ():
                address = fwd.get("listen_address")
                if address and address not in found:
                    found.append(address)
        return tuple(found)

    # -- internals ----------------------------------------------------------------------------

    async def _network_nictype(self, network: str) -> str:
        cached = self._network_types.get(network)
        now = time.monotonic()
        if cached and now - cached[0] < _NETWORK_CACHE_SECONDS:
            return cached[1]
        try:
            net = await self._get(f"networks/{_name_url(network)}")
            kind = str(net.get("type", ""))
        except NotFoundError:
            kind = ""
        nictype = NETWORK_NICTYPES.get(kind, kind)
        self._network_types[network] = (now, nictype)
        return nictype

    async def _build_instance(self, record: Mapping[str, Any],
                              state: Mapping[str, Any] | None) -> Instance:
        config = _expanded_config(record)
        nics: list[Nic] = []
        for dev_name, dev in sorted((record.get("expanded_devices") or {}).items()):
            if not isinstance(dev, Mapping) or dev.get("type") != "nic":
                continue
            if dev.get("nictype"):
                nictype = str(dev["nictype"])
            elif dev.get("network"):
                nictype = await self._network_nictype(str(dev["network"]))
            else:
                nictype = ""
            nics.append(Nic(
                name=dev_name,
                nictype=nictype,
                ipv4_address=dev.get("ipv4.address") or None,
                ipv6_address=dev.get("ipv6.address") or None,
                host_name=config.get(f"volatile.{dev_name}.host_name") or None,
                interface=dev.get("name") or None,
            ))
        type_text = record.get("type") or "container"
        try:
            inst_type = InstanceType(type_text)
        except ValueError as exc:
            raise NotSupportedError(f'Instance type "{type_text}" is not supported') from exc
        status = (state or {}).get("status") or record.get("status") or "Unknown"
        # Containers: host PID of init. VMs: QEMU's PID (VMs only get NAT-mode proxies anyway).
        pid = int((state or {}).get("pid") or 0)
        return Instance(
            name=str(record["name"]),
            type=inst_type,
            status=str(status),
            pid=pid if pid > 0 else None,
            nics=tuple(nics),
            project=str(record.get("project") or "default"),
        )

    async def _poll_once(self) -> dict[str, tuple]:
        # One request for every instance with its state (extension container_full, in 5.0).
        entries = await self._get("instances", recursion=2)
        return {str(e["name"]): instance_fingerprint(e, e.get("state")) for e in entries}

    async def _watch_loop(self, callback: InstanceChanged) -> None:
        """Poll LXD and report instances whose status, init PID or NICs changed.

        Polling instead of the events websocket: a restart is not one event in LXD (stop, start,
        plus volatile updates), and a poll also recovers by itself after LXD restarts.
        """
        known: dict[str, tuple] | None = None
        while True:
            try:
                current = await self._poll_once()
                self._last_poll_error = None
            except LxdError as exc:
                if str(exc) != self._last_poll_error:  # log each distinct failure once
                    log.warning("polling LXD at %s failed: %s", self.endpoint, exc)
                    self._last_poll_error = str(exc)
                current = None
            if current is not None:
                if known is not None:
                    changed = [n for n in sorted(set(known) | set(current))
                               if known.get(n) != current.get(n)]
                    for name in changed:
                        try:
                            await callback(name)
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            log.exception("instance change handler failed for %s", name)
                known = current
            await asyncio.sleep(self.poll_interval)
