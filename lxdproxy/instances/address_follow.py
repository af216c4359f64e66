"""Following the address an instance's NIC has now (``user.lxdproxy.nat_dynamic``).

Local instances: a netlink socket subscribed to address notifications (RTMGRP_IPV4_IFADDR,
RTMGRP_IPV6_IFADDR) is made inside the instance's netns (a socket keeps the netns it was made
in) and read by the event loop without blocking; every notification re-reads the interface's
addresses (``ip -j addr show dev``, under ``nsenter``). So a new lease is seen within
milliseconds, not at the next poll (Incus scans the neighbour table every 5 s).
The LXD backend polls the instance state's addresses (``StatePoller``).

Which address: the first one of that IP version on the interface with global scope that is
usable (not tentative, not failed duplicate address detection, not deprecated).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from lxdproxy.netns import netns_executor

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressChanged = Callable[[IPAddress | None], Awaitable[None]]

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
_UNUSABLE_FLAGS = ("tentative", "dadfailed", "deprecated")


class AddressFollower(Protocol):
    """One NIC's address, followed until ``close``; ``current`` is the last one seen."""

    current: IPAddress | None

    async def close(self) -> None: ...


def address_from_ip_json(links: list[dict[str, Any]], interface: str,
                         version: int) -> IPAddress | None:
    """Pure: ``ip -j addr`` output -> the interface's usable global address of ``version``."""
    family = "inet" if version == 4 else "inet6"
    for link in links:
        if link.get("ifname") != interface:
            continue
        for info in link.get("addr_info", []):
            if info.get("family") != family or info.get("scope") != "global":
                continue
            if any(info.get(flag) for flag in _UNUSABLE_FLAGS):
                continue
            with contextlib.suppress(ValueError):
                return ipaddress.ip_address(info.get("local", ""))
    return None


def address_from_state(network: Mapping[str, Any] | None, interface: str, host_name: str | None,
                       version: int) -> IPAddress | None:
    """Pure: LXD's state ``network`` map -> the NIC's global address of ``version``. The NIC is
    found by its host-side name when known (``volatile.<nic>.host_name``), else by name."""
    family = "inet" if version == 4 else "inet6"
    for name, entry in (network or {}).items():
        if not isinstance(entry, Mapping):
            continue
        if not (host_name and entry.get("host_name") == host_name) and name != interface:
            continue
        for addr in entry.get("addresses") or []:
            if addr.get("family") == family and addr.get("scope") == "global":
                with contextlib.suppress(ValueError):
                    return ipaddress.ip_address(addr.get("address", ""))
    return None


def _notification_socket(groups: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                         socket.NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


async def _read_ip_json(net_path: str, interface: str, timeout: float = 5.0
                        ) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={net_path}", "ip", "-j", "addr", "show", "dev", interface,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        return []  # no such interface (yet): no address
    return json.loads(out or b"[]")


class NetlinkAddressFollower:
    """A local instance's NIC address, re-read on every netlink address notification."""

    def __init__(self, net_path: str, interface: str, version: int,
                 changed: AddressChanged) -> None:
        self.net_path = net_path
        self.interface = interface
        self.version = version
        self.current: IPAddress | None = None
        self._changed = changed
        self._sock: socket.socket | None = None
        self._dirty = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> IPAddress | None:
        """Subscribe first, then read: a change in between is never missed."""
        groups = RTMGRP_IPV4_IFADDR if self.version == 4 else RTMGRP_IPV6_IFADDR
        self._sock = await netns_executor(self.net_path).run(_notification_socket, groups)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)
        self.current = await self._read()
        self._task = asyncio.get_running_loop().create_task(self._follow())
        return self.current

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            while self._sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        except OSError:  # ENOBUFS: notifications were lost; a fresh read covers them
            pass
        self._dirty.set()

    async def _read(self) -> IPAddress | None:
        try:
            links = await _read_ip_json(self.net_path, self.interface)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("reading the addresses of %s in %s failed: %s", self.interface,
                        self.net_path, exc)
            return self.current
        return address_from_ip_json(links, self.interface, self.version)

    async def _follow(self) -> None:
        while not self._closed:
            await self._dirty.wait()
            self._dirty.clear()
            if self._closed:
                return
            address = await self._read()
            if address != self.current and not self._closed:
                self.current = address
                try:
                    await self._changed(address)
                except Exception:
                    log.exception("following the address of %s failed", self.interface)

    async def close(self) -> None:
        """Stop following; returns once a change being applied has finished (never cut off
        half way, so the caller's removal of the rules comes after it)."""
        self._closed = True
        self._dirty.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


class StatePoller:
    """An address read from a state source every ``interval`` seconds (the LXD backend)."""

    def __init__(self, read: Callable[[], Awaitable[IPAddress | None]], interval: float,
                 changed: AddressChanged) -> None:
        self.current: IPAddress | None = None
        self._read = read
        self._interval = interval
        self._changed = changed
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> IPAddress | None:
        self.current = await self._read_logged()
        self._task = asyncio.get_running_loop().create_task(self._poll())
        return self.current

    async def _read_logged(self) -> IPAddress | None:
        try:
            return await self._read()
        except Exception as exc:  # LXD unreachable: keep what we had, try again
            log.warning("reading the instance's address failed: %s", exc)
            return self.current

    async def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)
                return
            address = await self._read_logged()
            if address != self.current and not self._stop.is_set():
                self.current = address
                try:
                    await self._changed(address)
                except Exception:
                    log.exception("following the instance's address failed")

    async def close(self) -> None:
        """Stop polling, once a change being applied has finished."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None


__all__ = ["AddressChanged", "AddressFollower", "NetlinkAddressFollower", "StatePoller",
           "address_from_ip_json", "address_from_state"]
