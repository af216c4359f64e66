"""UDP listeners spread over the workers: one SO_REUSEPORT socket per worker slot and a
slot-selecting eBPF program (``forward/udp/reuseport_prog.py``), so a client's datagrams,
hence its session, stay in one worker while every worker reads.

Each worker holds only its own slot's sockets (and a copy of each listener's map, which is how
a control plane that restarted gets it back). So when a worker dies its sockets leave their
groups and their map slots empty: its clients' next datagrams fall back to the kernel's hash
over the survivors; the survivors' clients never move. A replacement gets fresh sockets, put
into the same maps (``join``).

``DeviceFds`` is what a start sends, per slot: shared sockets (tcp, unix, or UDP read by one
owner) go to every worker; a spread device's worker gets its own sockets, then the maps.
``spread_listeners`` makes them for a start (or an update, keeping what each worker has);
``fds_for_slot`` for one new worker, from the maps a running one holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Iterable

from lxdproxy.forward.plan import ListenSpec, PlanError, listen_error
from lxdproxy.forward.udp import reuseport
from lxdproxy.netns import Namespaces, NetnsExecutor, netns_executor
from lxdproxy.workers.link import WorkerGone, WorkerLink
from lxdproxy.workers.protocol import DeviceKey, Listeners


@dataclasses.dataclass
class DeviceFds:
    """The fds one start sends: ``slots[i]`` = (listeners in plan order, maps) for slot i;
    ``shared`` for a slot not named there. ``close()`` closes every fd once."""

    shared: list[int] = dataclasses.field(default_factory=list)
    slots: dict[int, tuple[list[int], list[int]]] = dataclasses.field(default_factory=dict)

    def of(self, slot: int) -> tuple[list[int], list[int]]:
        return self.slots.get(slot, (self.shared, []))

    def close(self) -> None:
        every = set(self.shared)
        for listeners, maps in self.slots.values():
            every.update(listeners, maps)
        for fd in every:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.shared, self.slots = [], {}


def _member(spec: ListenSpec) -> socket.socket:
    """One bound socket of a listener's group (runs in the listen netns)."""
    sock = socket.socket(spec.family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if spec.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if spec.dual_stack else 1)
        sock.bind(spec.sockaddr)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _new_group(spec: ListenSpec, count: int) -> list[socket.socket]:
    """``count`` members of a new group. A plain bind first: SO_REUSEPORT would let our
    sockets join another root-owned group on that port (another device's), where a bind must
    fail as it does without the spread (EADDRINUSE, with LXD's text)."""
    probe = socket.socket(spec.family, socket.SOCK_DGRAM)
    try:
        if spec.family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if spec.dual_stack else 1)
        probe.bind(spec.sockaddr)
    finally:
        probe.close()
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            made.append(_member(spec))
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


def _join(spec: ListenSpec, count: int) -> list[socket.socket]:
    return [_member(spec) for _ in range(count)]


def _executor(ns: Namespaces) -> NetnsExecutor:
    try:
        return netns_executor(ns.net)
    except OSError as exc:
        raise PlanError(f"{exc.strerror or exc} - Failed setns to listener network namespace"
                        ) from None


def _checked(spec: ListenSpec) -> ListenSpec:
    if spec.port is None or not 0 <= spec.port <= 0xFFFF:
        raise PlanError(listen_error(spec, ValueError("invalid port")))
    return spec


async def open_groups(listeners: Iterable[ListenSpec], listen_ns: Namespaces, size: int,
                      slots: Iterable[int]) -> tuple[dict[int, list[int]], list[int]]:
    """New groups, one per listener, with a map of ``size`` slots each, and a socket for each
    of ``slots`` in it. Returns (slot -> socket fds in plan order, map fds); raises PlanError
    with LXD's text (a bind) or OSError (bpf), and then nothing stays open."""
    wanted = sorted(set(slots))
    ex = _executor(listen_ns)
    by_slot: dict[int, list[int]] = {slot: [] for slot in wanted}
    maps: list[int] = []
    try:
        for spec in listeners:
            try:
                socks = await ex.run(_new_group, _checked(spec), len(wanted))
            except OSError as exc:
                raise PlanError(listen_error(spec, exc)) from None
            fds = [s.detach() for s in socks]
            for slot, fd in zip(wanted, fds, strict=True):
                by_slot[slot].append(fd)
            map_fd = reuseport.create_map(size)
            maps.append(map_fd)
            prog_fd = reuseport.load_program(size, map_fd)
            try:
                with socket.socket(fileno=os.dup(fds[0])) as first:
                    reuseport.attach(first, prog_fd)
            finally:
                os.close(prog_fd)  # the group holds the program, the program the map
            for slot, fd in zip(wanted, fds, strict=True):
                reuseport.put_socket(map_fd, slot, fd)
    except BaseException:
        DeviceFds(slots={0: ([fd for fds in by_slot.values() for fd in fds], maps)}).close()
        raise
    return by_slot, maps


async def join_groups(listeners: Iterable[ListenSpec], listen_ns: Namespaces,
                      maps: list[int], slot: int) -> list[int]:
    """A fresh socket in each listener's running group, put into its map at ``slot`` (a
    replacement worker's, or the new generation's on reload). Returns the fds in plan order."""
    specs = list(listeners)
    if len(specs) != len(maps):
        raise PlanError(f"{len(specs)} UDP listeners but {len(maps)} reuseport maps")
    ex = _executor(listen_ns)
    fds: list[int] = []
    try:
        for spec, map_fd in zip(specs, maps, strict=True):
            try:
                (sock,) = await ex.run(_join, _checked(spec), 1)
            except OSError as exc:
                raise PlanError(listen_error(spec, exc)) from None
            fds.append(sock.detach())
            reuseport.put_socket(map_fd, slot, fds[-1])
    except BaseException:
        DeviceFds(shared=fds).close()
        raise
    return fds


def spread_unavailable(*, wanted: bool, workers: int) -> str | None:
    """Why the pool keeps one reading worker per UDP device (None: it spreads them)."""
    if not wanted:
        return "turned off (--no-udp-spread)"
    if workers < 2:
        return "one worker"
    return reuseport.unavailable()


async def own_listeners(link: WorkerLink, key: DeviceKey
                        ) -> tuple[list[int], list[int]] | None:
    """``link``'s sockets and reuseport maps of ``key``; None if it is gone or does not run
    it."""
    try:
        reply, fds = await link.request(Listeners(key))
    except WorkerGone:
        return None
    maps = reply.result.get("udp_maps", 0) if isinstance(reply.result, dict) else 0
    if not reply.ok or not isinstance(maps, int) or not 0 <= maps <= len(fds):
        DeviceFds(shared=fds).close()
        return None
    return fds[:len(fds) - maps], fds[len(fds) - maps:]


async def spread_listeners(links: list[WorkerLink], key: DeviceKey, listen_ns: Namespaces,
                           listeners: tuple[ListenSpec, ...], keep: dict[int, int], size: int
                           ) -> DeviceFds:
    """Each of ``links``' own sockets and the maps for a start of ``key``: kept listeners
    (new position -> old) from that worker itself, the others in new groups. Raises PlanError
    (LXD's text) or OSError (bpf)."""
    fresh = [s for i, s in enumerate(listeners) if i not in keep]
    out = DeviceFds()
    new_maps: list[int] = []
    new_socks: dict[int, list[int]] = {}
    try:
        if fresh:
            new_socks, new_maps = await open_groups(fresh, listen_ns, size,
                                                    [w.index for w in links])
        for link in links:
            own: tuple[list[int], list[int]] = ([], [])
            if keep:
                got = await own_listeners(link, key)
                if got is None:
                    continue  # gone: its replacement gets fresh sockets
                own = got
            socks, maps = [], []
            made = iter(zip(new_socks.pop(link.index, []), new_maps, strict=True))
            for i in range(len(listeners)):
                if i in keep:
                    socks.append(own[0][keep[i]])
                    maps.append(own[1][keep[i]])
                else:
                    sock, map_fd = next(made)
                    socks.append(sock)
                    maps.append(os.dup(map_fd))
            used = set(socks) | set(maps)
            DeviceFds(shared=[fd for fd in [*own[0], *own[1]] if fd not in used]).close()
            out.slots[link.index] = (socks, maps)
    except BaseException:
        out.close()
        raise
    finally:
        DeviceFds(shared=[*new_maps, *(fd for fds in new_socks.values() for fd in fds)]).close()
    return out


async def fds_for_slot(others: list[WorkerLink], slot: int, key: DeviceKey,
                       listen_ns: Namespaces, listeners: tuple[ListenSpec, ...], size: int
                       ) -> DeviceFds:
    """What a new worker in ``slot`` (a replacement, or the next generation) needs to run
    ``key``: a fresh socket in each running group, from the maps another worker holds; new
    groups when no worker runs it any more. Raises PlanError or OSError."""
    for other in others:
        got = await own_listeners(other, key)
        if got is None:
            continue
        socks, maps = got
        DeviceFds(shared=socks).close()  # another slot's: never kept, or it outlives its worker
        try:
            fds = await join_groups(listeners, listen_ns, maps, slot)
        except BaseException:
            DeviceFds(shared=maps).close()
            raise
        return DeviceFds(slots={slot: (fds, maps)})
    # Its groups went with their last sockets.
    new_socks, new_maps = await open_groups(listeners, listen_ns, size, [slot])
    return DeviceFds(slots={slot: (new_socks[slot], new_maps)})


__all__ = ["DeviceFds", "fds_for_slot", "join_groups", "open_groups", "own_listeners",
           "spread_listeners", "spread_unavailable"]
