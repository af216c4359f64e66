"""One running proxy device: its listeners, accept loop and live connections.

Accepting is a ``loop.add_reader`` callback that accepts one client per call: the loop's
readiness is level-triggered, so more pending clients call it again, and no accept is spent
learning that the queue is empty (with the workers sharing one listening socket, draining to
EAGAIN cost one failed accept4 per connection). The kernel's own check before epoll_wait returns
keeps a worker whose peer already took the connection from returning to user space for it.

Each accepted client is dialled to the target non-blocking, with a timeout, so a dead or slow
target never stalls other clients or listeners (LXD dials synchronously in its epoll loop,
§9.9). The common dial (no PROXY header, no dropped-ids connector, a pooled or inline socket)
is a chain of callbacks (``_PendingDial``); the others are a short task (``_serve``) that may
await the connector or the pool and writes the PROXY header. Both hand the two sockets to a
callback-driven relay.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import dataclass

from lxdproxy.config.model import ProxyDevice
from lxdproxy.forward.budget import DeviceBudget, TrafficBudget
from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.endpoints import ConnectFailed, Endpoints
from lxdproxy.forward.plan import DevicePlan, HeaderKind, ListenSpec, RelayKind
from lxdproxy.forward.rate_limited_log import RateLimitedLog
from lxdproxy.forward.stream_relay import RelayMode, StreamRelay
from lxdproxy.forward.udp.listener import UdpListenerRelay, relay_stream_to_datagram
from lxdproxy.netns import Namespaces
from lxdproxy.netns.protected_paths import ProtectedPaths
from lxdproxy.proxy_protocol.codec import Command, Transport, encode_v1, encode_v2, netns_tlv

log = logging.getLogger(__name__)

ACCEPT_PAUSE = 0.1  # out of fds (EMFILE...): stop accepting this long instead of spinning


@dataclass(frozen=True)
class DeviceParams:
    """Everything a device was started with, so it can be started again (update restore)."""

    device: ProxyDevice
    listen_ns: Namespaces
    connect_ns: Namespaces
    instance_name: str


class ForwardedDevice:
    def __init__(self, params: DeviceParams, plan: DevicePlan, *, label: str,
                 connect_timeout: float, udp_idle_timeout: float,
                 counters: DeviceCounters | None = None,
                 protected: ProtectedPaths | None = None,
                 budget: DeviceBudget | None = None,
                 relay: RelayMode = RelayMode.COPY) -> None:
        self.params = params
        self.counters = counters if counters is not None else DeviceCounters()
        self.budget = budget or TrafficBudget().device(label)
        self.plan = plan
        self.label = label
        self.loop = asyncio.get_running_loop()
        self.endpoints = Endpoints(params.device, plan, listen_ns=params.listen_ns,
                                   connect_ns=params.connect_ns, connect_timeout=connect_timeout,
                                   protected=protected)
        self.udp_idle_timeout = udp_idle_timeout
        self.listeners: list[tuple[socket.socket, ListenSpec]] = []
        self.udp_relays: list[UdpListenerRelay] = []
        self.relays: set[StreamRelay] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.dials: set[_PendingDial] = set()
        self.stopped = False
        self.retiring = False  # stopped accepting; established connections run to their end
        self._idle = asyncio.Event()
        self._accepting: set[int] = set()
        self._fast_dial = plan.header is HeaderKind.NONE and plan.relay in (
            RelayKind.STREAM, RelayKind.UNIX_RIGHTS)
        self._warn = RateLimitedLog(log, label)
        self._mode = RelayMode.RIGHTS if plan.relay is RelayKind.UNIX_RIGHTS else relay

    @property
    def open_connections(self) -> int:
        return len(self.relays) + len(self.tasks) + len(self.dials)

    @property
    def accepted(self) -> int:
        return self.counters.connections_accepted

    @property
    def failed(self) -> int:
        return self.counters.connect_failures

    def counters_snapshot(self) -> dict[str, int]:
        """The counters and gauges as plain numbers (``forward.counters`` field names)."""
        return {**self.counters.as_dict(), "connections_active": self.open_connections,
                "udp_sessions_active": sum(r.session_count for r in self.udp_relays)}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, listeners: list[socket.socket] | None = None, *,
                    read_datagrams: bool = True) -> None:
        """Open everything; on failure nothing stays open (raises PlanError).

        ``listeners``: sockets opened elsewhere (a worker gets them from the control plane),
        one per planned listener; they are ours from here (closed by stop()), and nothing
        this method opens stays open on failure. ``read_datagrams=False`` holds UDP listeners
        without reading them (another worker owns their sessions).
        """
        try:
            await self.endpoints.prepare_connector()
            socks = listeners if listeners is not None else await self.endpoints.open_listeners()
        except BaseException:
            await self.endpoints.close()
            raise
        self.listeners = list(zip(socks, self.plan.listeners, strict=True))
        for sock, spec in self.listeners:
            sock.setblocking(False)
            if self.plan.relay is RelayKind.DATAGRAM:
                if not read_datagrams:
                    continue
                relay = UdpListenerRelay(
                    sock, spec.connect_port or 0, self.endpoints.open_datagram,
                    header_factory=self._datagram_header if self.plan.header is HeaderKind.V2
                    else None,
                    idle_timeout=self.udp_idle_timeout, counters=self.counters,
                    budget=self.budget,
                )
                relay.start()
                self.udp_relays.append(relay)
            else:
                self._resume_accept(sock, spec)

    async def stop_accepting(self) -> None:
        """Close this device's hold on its listeners and accept nothing more; established
        connections go on (``wait_idle`` tells when they are all gone). UDP sessions end here:
        their replies leave through the listening socket, and a newer device reads it now."""
        if self.retiring or self.stopped:
            return
        self.retiring = True
        for sock, _spec in self.listeners:
            self._pause_accept(sock)
        relays, self.udp_relays = self.udp_relays, []
        for relay in relays:
            await relay.stop()
        for sock, _spec in self.listeners:
            sock.close()
        self._check_idle()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """After stop_accepting: wait until no connection is left (False if ``timeout`` hit)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _check_idle(self) -> None:
        if self.retiring and not self.relays and not self.tasks and not self.dials:
            self._idle.set()

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for sock, _spec in self.listeners:
            self._pause_accept(sock)
        for relay in self.udp_relays:
            await relay.stop()
        for sock, _spec in self.listeners:
            sock.close()
        for dial in list(self.dials):
            dial.abandon()
        for relay in list(self.relays):
            relay.close("device stopped")
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.endpoints.close()

    # -- accepting ------------------------------------------------------------------------------
    def _resume_accept(self, sock: socket.socket, spec: ListenSpec) -> None:
        if self.stopped or self.retiring or sock.fileno() in self._accepting:
            return
        self._accepting.add(sock.fileno())
        self.loop.add_reader(sock.fileno(), self._on_acceptable, sock, spec)

    def _pause_accept(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd in self._accepting:
            self._accepting.discard(fd)
            self.loop.remove_reader(fd)

    def _on_acceptable(self, sock: socket.socket, spec: ListenSpec) -> None:
        try:
            conn, _addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._warn.warning("Failed accepting new connection: %s", exc.strerror)
                self._pause_accept(sock)
                self.loop.call_later(ACCEPT_PAUSE, self._resume_accept, sock, spec)
            return  # ECONNABORTED and friends: that client is gone; the next wakes us again
        if not self.budget.admit_connection():
            conn.close()  # at once: a refused client must not wait in the backlog
            return
        self.counters.connections_accepted += 1
        conn.setblocking(False)
        if spec.family != socket.AF_UNIX:  # not conn.family: that makes an enum per call
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._fast_dial and self._dial(conn, spec):
            return
        task = self.loop.create_task(self._serve(conn, spec))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _dial(self, client: socket.socket, spec: ListenSpec) -> bool:
        """The common dial, without a task; False when it needs ``_serve`` instead."""
        try:
            begun = self.endpoints.begin_stream(spec.connect_port)
        except ConnectFailed as exc:
            self._dial_failed(client, None, exc)
            return True
        except OSError as exc:
            self._prepare_failed(client, None, exc)
            return True
        if begun is None:
            return False
        target, connected = begun
        if connected:
            self._relay(client, target)
        else:
            self.dials.add(_PendingDial(self, client, target, spec.connect_port))
        return True

    def _dial_failed(self, client: socket.socket, target: socket.socket | None,
                     exc: ConnectFailed) -> None:
        # The client of a failed dial is closed at once: it sees connect-then-close, as with LXD.
        self.counters.connect_failures += 1
        self._warn.warning("Failed connecting to target: %s", exc)
        client.close()
        if target is not None:
            target.close()
        self.budget.release_connection()

    def _prepare_failed(self, client: socket.socket, target: socket.socket | None,
                        exc: OSError) -> None:
        self.counters.connect_failures += 1
        self._warn.warning("Failed preparing connection: %s", exc.strerror or exc)
        client.close()
        if target is not None:
            target.close()
        self.budget.release_connection()

    def _relay(self, client: socket.socket, target: socket.socket,
               writer_fd: int | None = None) -> None:
        """Both sockets connected: a relay owns them (and the connection's budget) from here.
        ``writer_fd``: the dial's writer on the target, removed once the relay watches it (on
        uvloop the fd's poll handle then stays, instead of being closed and made again)."""
        try:
            relay = StreamRelay(client, target, mode=self._mode, on_close=self._relay_closed,
                                warn=self._relay_warning, counters=self.counters)
        except BaseException as exc:
            if writer_fd is not None:
                self.loop.remove_writer(writer_fd)
            if not isinstance(exc, OSError):
                client.close()
                target.close()
                self.budget.release_connection()
                raise
            self._prepare_failed(client, target, exc)
            return
        self.relays.add(relay)
        relay.start()
        if writer_fd is not None:
            self.loop.remove_writer(writer_fd)

    async def _serve(self, client: socket.socket | None, spec: ListenSpec) -> None:
        assert client is not None
        target: socket.socket | None = None
        relayed = False  # a StreamRelay owns the connection's budget from then on
        try:
            if self.plan.relay is RelayKind.STREAM_TO_DATAGRAM:
                target = await self.endpoints.open_datagram(spec.connect_port)
                header = self._stream_header(client)
                # From here relay_stream_to_datagram owns (and closes) both sockets.
                stream, dgram, client, target = client, target, None, None
                await relay_stream_to_datagram(stream, dgram, header=header,
                                               idle_timeout=self.udp_idle_timeout,
                                               counters=self.counters)
                return
            target = await self.endpoints.open_stream(spec.connect_port)
            header = self._stream_header(client)
            if header:
                # Before any data, in one write (as forkproxy does).
                await self.loop.sock_sendall(target, header)
            relay = StreamRelay(client, target, mode=self._mode, on_close=self._relay_closed,
                                warn=self._relay_warning, counters=self.counters)
            client = target = None  # the relay owns them now
            self.relays.add(relay)
            relayed = True
            relay.start()
        except ConnectFailed as exc:
            self.counters.connect_failures += 1
            self._warn.warning("Failed connecting to target: %s", exc)
        except OSError as exc:
            self.counters.connect_failures += 1
            self._warn.warning("Failed preparing connection: %s", exc.strerror or exc)
        finally:
            # The client of a failed dial is closed at once: it sees connect-then-close, as with LXD.
            if client is not None:
                client.close()
            if target is not None:
                target.close()
            if not relayed:
                self.budget.release_connection()

    def _relay_warning(self, message: str) -> None:
        self._warn.warning("%s", message)

    def _dial_done(self, dial: _PendingDial) -> None:
        self.dials.discard(dial)
        self._check_idle()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._check_idle()

    def _relay_closed(self, relay: StreamRelay, reason: str) -> None:
        if relay in self.relays:
            self.relays.discard(relay)
            self.budget.release_connection()
        self._check_idle()

    # -- PROXY headers --------------------------------------------------------------------------
    def _stream_header(self, client: socket.socket) -> bytes | None:
        kind = self.plan.header
        if kind is HeaderKind.NONE:
            return None
        peer, local = client.getpeername(), client.getsockname()
        if kind is HeaderKind.V1:
            # forkproxy: "PROXY UNKNOWN\r\n" from a unix listener (v1 has no unix family).
            if client.family == socket.AF_UNIX:
                return encode_v1(None, None)
            return encode_v1(peer, local)
        transport = (Transport.DGRAM if self.plan.relay is RelayKind.STREAM_TO_DATAGRAM
                     else Transport.STREAM)
        return encode_v2(Command.PROXY, transport, peer, local,
                         [netns_tlv(self.params.instance_name)])

    def _datagram_header(self, client: tuple, local: tuple) -> bytes:
        return encode_v2(Command.PROXY, Transport.DGRAM, client, local,
                         [netns_tlv(self.params.instance_name)])


class _PendingDial:
    """A dial in progress: waits for the target socket to become writable (connected or failed)
    or for the connect timeout, then relays or fails the client as ``_serve`` would."""

    __slots__ = ("device", "client", "target", "port", "fd", "timer")

    def __init__(self, device: ForwardedDevice, client: socket.socket, target: socket.socket,
                 port: int | None) -> None:
        self.device = device
        self.client = client
        self.target = target
        self.port = port
        self.fd = target.fileno()
        loop = device.loop
        loop.add_writer(self.fd, self._writable)
        self.timer = loop.call_later(device.endpoints.connect_timeout, self._timed_out)

    def _writable(self) -> None:
        device = self.device
        self.timer.cancel()
        try:
            device.endpoints.finish_stream(self.target, self.port)
        except ConnectFailed as exc:
            device.loop.remove_writer(self.fd)
            device._dial_failed(self.client, self.target, exc)
        except OSError as exc:
            device.loop.remove_writer(self.fd)
            device._prepare_failed(self.client, self.target, exc)
        else:
            device._relay(self.client, self.target, writer_fd=self.fd)
        device._dial_done(self)

    def _timed_out(self) -> None:
        device = self.device
        device.loop.remove_writer(self.fd)
        device._dial_failed(self.client, self.target, device.endpoints.dial_timed_out(self.port))
        device._dial_done(self)

    def abandon(self) -> None:
        """The device stops: close both sockets, no warning (as a cancelled ``_serve``)."""
        device = self.device
        self.timer.cancel()
        device.loop.remove_writer(self.fd)
        self.client.close()
        self.target.close()
        device.budget.release_connection()
        device._dial_done(self)
