"""Sockets born in the right namespace: a device's listeners and the connections to its target.

- tcp/udp/abstract-unix sockets come from ``netns_executor(ns.net)`` (a thread inside that netns);
  connecting happens on the event loop, non-blocking, with a timeout.
- A unix *path* on a side with its own mount namespace is only ever resolved by a
  ``NamespaceHelper`` inside that mount namespace: never through ``/proc/<pid>/root`` from here,
  which would follow the instance's symlinks out to the host (a container escape).
- ``security.uid``/``security.gid``: every outgoing connection is made by a helper that joined the
  connect side's user namespace and dropped to those ids (LXD's forkproxy drops its connector the
  same way, so ids are mapped through the instance's id map for bind=host).
- ``user.lxdproxy.security.bind_uid``/``bind_gid``: the listeners are made the same way on the
  listen side (a helper in its namespaces, dropped to those ids), for every socket type.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from dataclasses import dataclass

from lxdproxy.config.model import BindSide, ConnType, ProxyDevice
from lxdproxy.forward.plan import (
    DevicePlan,
    ListenSpec,
    PlanError,
    go_strerror,
    join_host_port,
    listen_error,
)
from lxdproxy.forward.socket_pool import SocketPool, new_socket
from lxdproxy.netns import NamespaceHelper, Namespaces, NetnsExecutor, netns_executor
from lxdproxy.netns.protected_paths import ProtectedPaths

LISTEN_BACKLOG = 4096
# Linux's default net.ipv4.ip_unprivileged_port_start: binding below it needs
# CAP_NET_BIND_SERVICE.
PRIVILEGED_PORTS = 1024


class ConnectFailed(Exception):
    """A connection to the target failed; ``str()`` reads like forkproxy's dial error."""


@dataclass
class _HostSocketFile:
    """The unix socket file we created on the daemon's side, so stop() removes that one only."""

    path: str
    identity: tuple[int, int] | None  # (st_dev, st_ino) of the socket file the helper made


def _netns_listener(spec: ListenSpec) -> socket.socket:
    """A tcp, udp or abstract-unix listener, non-blocking; closed if any step fails."""
    sock_type = socket.SOCK_DGRAM if spec.conn_type is ConnType.UDP else socket.SOCK_STREAM
    sock = socket.socket(spec.family, sock_type)
    try:
        if sock_type == socket.SOCK_STREAM and spec.family != socket.AF_UNIX:
            # As Go: a restarted device can rebind while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if spec.dual_stack else 1)
        sock.bind(spec.sockaddr)
        if sock_type == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _executor(ns: Namespaces, role: str) -> NetnsExecutor:
    try:
        return netns_executor(ns.net)
    except OSError as exc:
        # forkproxy: "Error: %m - Failed setns to <side> network namespace"
        raise PlanError(f"{exc.strerror or exc} - Failed setns to {role} network namespace"
                        ) from None


class Endpoints:
    """The namespaces and helpers of one running device."""

    def __init__(self, device: ProxyDevice, plan: DevicePlan, *, listen_ns: Namespaces,
                 connect_ns: Namespaces, connect_timeout: float,
                 protected: ProtectedPaths | None = None) -> None:
        self.device = device
        self.protected = protected  # the daemon's API socket and state dir: never listened on
        self.plan = plan
        self.listen_ns = listen_ns
        self.connect_ns = connect_ns
        self.connect_timeout = connect_timeout
        self._connector: NamespaceHelper | None = None  # joined the connect side (maybe dropped)
        self._host_socket: _HostSocketFile | None = None
        self._connect_ex: NetnsExecutor | None = None
        self._inline_connect = False  # the connect netns is the daemon's own: no thread hop
        self._pools: dict[int, SocketPool] = {}  # by socket type; foreign connect netns only

    # -- listening ------------------------------------------------------------------------------
    async def open_listeners(self) -> list[socket.socket]:
        """Every listener of the device, or none: raises PlanError with forkproxy's text."""
        opened: list[socket.socket] = []
        binder: NamespaceHelper | None = None
        try:
            if self.device.drops_bind_ids:
                # user.lxdproxy.security.bind_uid/gid: one helper in the listen side's
                # namespaces, dropped to those ids, makes every listener, so the kernel's
                # permission checks (paths, low ports) apply to those ids, not to root.
                binder = await self._spawn(self.listen_ns, uid=self.device.bind_uid,
                                           gid=self.device.bind_gid)
            for spec in self.plan.listeners:
                opened.append(await self._open_listener(spec, binder))
        except BaseException:
            for sock in opened:
                sock.close()
            await self.remove_host_socket()
            raise
        finally:
            if binder is not None:
                await binder.close()
        return opened

    async def _open_listener(self, spec: ListenSpec, binder: NamespaceHelper | None
                             ) -> socket.socket:
        """``binder``: a namespace helper dropped to the bind ids, which then makes it."""
        if spec.family != socket.AF_UNIX and (spec.port is None
                                              or not 0 <= spec.port <= 0xFFFF):
            raise PlanError(listen_error(spec, ValueError("invalid port")))
        if binder is None and (spec.family != socket.AF_UNIX or spec.abstract):
            try:
                return await _executor(self.listen_ns, "listener").run(_netns_listener, spec)
            except OSError as exc:
                raise self._listen_failed(spec, exc) from None
        if spec.family != socket.AF_UNIX:
            assert binder is not None
            sock_type = socket.SOCK_DGRAM if spec.conn_type is ConnType.UDP else socket.SOCK_STREAM
            try:
                sock = await binder.bind_inet(spec.family, sock_type, spec.host, spec.port,
                                              dual_stack=spec.dual_stack,
                                              listen_backlog=LISTEN_BACKLOG)
            except OSError as exc:
                raise self._listen_failed(spec, exc) from None
            sock.setblocking(False)
            return sock
        helper = binder or await self._spawn(self.listen_ns)
        try:
            try:
                sock, identity = await helper.bind_unix_file(
                    spec.host, socket.SOCK_STREAM, uid=self.device.uid, gid=self.device.gid,
                    mode=self.device.mode, listen_backlog=LISTEN_BACKLOG,
                    protected=self.protected)
            except OSError as exc:
                raise self._listen_failed(spec, exc) from None
        finally:
            if helper is not binder:
                await helper.close()
        if self.device.bind is BindSide.HOST and not spec.abstract:
            self._host_socket = _HostSocketFile(spec.host, identity)
        sock.setblocking(False)
        return sock

    def _listen_failed(self, spec: ListenSpec, exc: OSError) -> PlanError:
        """forkproxy's text; when the ids were dropped and the kernel said no, also why."""
        text = listen_error(spec, exc)
        if not self.device.drops_bind_ids or exc.errno not in (errno.EACCES, errno.EPERM):
            return PlanError(text)
        who = f"uid {self.device.bind_uid or 0}, gid {self.device.bind_gid or 0}"
        if spec.port is not None and spec.port < PRIVILEGED_PORTS:
            return PlanError(f"{text} (the listener is made as {who} "
                             f"(user.lxdproxy.security.bind_uid/bind_gid): a port below "
                             f"{PRIVILEGED_PORTS} needs CAP_NET_BIND_SERVICE)")
        return PlanError(f"{text} (the listener is made as {who} "
                         "(user.lxdproxy.security.bind_uid/bind_gid), which may not create it)")

    def take_host_socket(self) -> tuple[str, tuple[int, int] | None] | None:
        """Hand over the daemon-side socket file (path, identity) to whoever will remove it
        (a worker pool removes it when the device stops, long after these endpoints are gone)."""
        entry, self._host_socket = self._host_socket, None
        return None if entry is None else (entry.path, entry.identity)

    async def remove_host_socket(self) -> None:
        """Delete the daemon-side socket file we created (LXD does this for bind=host only)."""
        entry = self.take_host_socket()
        if entry is not None:
            await remove_socket_file(entry[0], entry[1], self.listen_ns)

    # -- connecting -----------------------------------------------------------------------------
    async def prepare_connector(self) -> None:
        """Spawn the connect-side helper when the target needs one (checked at start, as
        forkproxy joins the connect namespaces before it reports ``Status: Started``)."""
        self._connect_ex = _executor(self.connect_ns, "connector")
        own = netns_executor(None)
        self._inline_connect = self._connect_ex is own
        target = self.plan.target
        dropped = bool(self.device.security_uid or self.device.security_gid)
        foreign_path = (target.family == socket.AF_UNIX and not target.abstract
                        and (self.connect_ns.mnt is not None or self.connect_ns.user is not None))
        if dropped or foreign_path:
            self._connector = await self._spawn(
                self.connect_ns,
                uid=self.device.security_uid or None,
                gid=self.device.security_gid or None,
            )

    async def open_stream(self, connect_port: int | None) -> socket.socket:
        return await self._connect(socket.SOCK_STREAM, connect_port)

    async def open_datagram(self, connect_port: int | None) -> socket.socket:
        return await self._connect(socket.SOCK_DGRAM, connect_port)

    def _target_address(self, port: int | None) -> tuple[str | bytes | tuple[str, int], str]:
        """(sockaddr, "dial <net> <address>" as Go words it); raises ConnectFailed."""
        target = self.plan.target
        if target.family == socket.AF_UNIX:
            address: str | bytes = (b"\0" + target.host[1:].encode() if target.abstract
                                    else target.host)
            return address, f"dial unix {target.host}"
        assert port is not None
        if not 0 <= port <= 0xFFFF:
            raise ConnectFailed(f"dial {target.conn_type.value}: address {port}: invalid port")
        return (target.host, port), \
            f"dial {target.conn_type.value} {join_host_port(target.host, port)}"

    async def _connect(self, sock_type: int, port: int | None) -> socket.socket:
        target = self.plan.target
        sockaddr, what = self._target_address(port)
        try:
            if self._connector is not None and target.family == socket.AF_UNIX:
                # Path lookup, permission checks and SO_PEERCRED all happen at connect(): it
                # must run inside the helper (its mount ns, its ids).
                sock = await self._connector.connect_unix(target.host, sock_type,
                                                          timeout=self.connect_timeout)
                sock.setblocking(False)
            else:
                if self._connector is not None:
                    # An inet socket carries its creator's ids (netfilter's skuid/skgid): the
                    # dropped helper makes it, and we connect it here, non-blocking, so a dead
                    # target never holds up the (one-request-at-a-time) helper.
                    sock = await self._connector.socket(target.family, sock_type)
                elif self._inline_connect or (target.family == socket.AF_UNIX
                                              and not target.abstract):
                    sock = new_socket(target.family, sock_type)  # a path: netns-independent
                else:
                    sock = await self._pool(target.family, sock_type).get()
                try:
                    if sock.gettimeout() != 0.0:
                        sock.setblocking(False)
                    if sock_type == socket.SOCK_DGRAM:
                        sock.connect(sockaddr)  # no handshake: returns at once
                    elif not _connect_started(sock, sockaddr):
                        await self._wait_connected(sock)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise ConnectFailed(f"{what}: i/o timeout") from None
        except OSError as exc:
            raise _dial_failed(what, exc) from None
        if sock.family != socket.AF_UNIX and sock_type == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go does
        return sock

    # The stream dial without a coroutine (the device's common path): begin_stream, then, when
    # it is not connected yet, finish_stream once the socket is writable or dial_timed_out.
    def begin_stream(self, port: int | None) -> tuple[socket.socket, bool] | None:
        """Start dialling the target: (socket, connected), or None when this dial needs the
        coroutine (``open_stream``): a dropped-ids connector, or an empty socket pool.
        Raises ConnectFailed, or OSError for a socket option (the socket is closed then)."""
        if self._connector is not None:
            return None
        target = self.plan.target
        sockaddr, what = self._target_address(port)
        if self._inline_connect or (target.family == socket.AF_UNIX and not target.abstract):
            try:
                sock = new_socket(target.family, socket.SOCK_STREAM)
            except OSError as exc:
                raise _dial_failed(what, exc) from None
        else:
            pooled = self._pool(target.family, socket.SOCK_STREAM).take()
            if pooled is None:
                return None
            sock = pooled
        try:
            connected = _connect_started(sock, sockaddr)
        except OSError as exc:
            sock.close()
            raise _dial_failed(what, exc) from None
        except BaseException:
            sock.close()
            raise
        if connected and target.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go does
            except BaseException:
                sock.close()
                raise
        return sock, connected

    def finish_stream(self, sock: socket.socket, port: int | None) -> None:
        """A begun dial's socket became writable: raises ConnectFailed if the dial failed, or
        OSError (the caller closes the socket either way)."""
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise _dial_failed(self._target_address(port)[1], OSError(err, os.strerror(err)))
        if self.plan.target.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def dial_timed_out(self, port: int | None) -> ConnectFailed:
        return ConnectFailed(f"{self._target_address(port)[1]}: i/o timeout")

    def _pool(self, family: int, sock_type: int) -> SocketPool:
        pool = self._pools.get(sock_type)
        if pool is None:
            assert self._connect_ex is not None
            pool = self._pools[sock_type] = SocketPool(self._connect_ex, family, sock_type)
        return pool

    def pooled_sockets(self) -> int:
        return sum(len(p) for p in self._pools.values())

    async def _wait_connected(self, sock: socket.socket) -> None:
        """Wait, up to ``connect_timeout``, for a begun connect to finish (raises TimeoutError
        or OSError).

        Not ``loop.sock_connect``: uvloop's resolves every address, literal IPs too, with a real
        getaddrinfo on libuv's thread pool (~110 µs per connection). Our target hosts are always
        literal addresses (config validation), so connect_ex needs no resolving.
        """
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _resolve, done, None)
        timer = loop.call_later(self.connect_timeout, _resolve, done, TimeoutError())
        try:
            await done
        finally:
            timer.cancel()
            loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))

    # -- helpers --------------------------------------------------------------------------------
    async def _spawn(self, ns: Namespaces, *, uid: int | None = None,
                     gid: int | None = None) -> NamespaceHelper:
        try:
            return await NamespaceHelper.spawn(ns, uid=uid, gid=gid)
        except OSError as exc:
            raise PlanError(exc.strerror or str(exc)) from None

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()
        helper, self._connector = self._connector, None
        if helper is not None:
            await helper.close()
        await self.remove_host_socket()


async def remove_socket_file(path: str, identity: tuple[int, int] | None,
                             listen_ns: Namespaces) -> None:
    """Delete a unix socket file we bound, only if it is still ours (``identity``: its
    (st_dev, st_ino) when bound): a file someone put there since is left alone. In our own
    mount namespace it is compared here; in another, a helper inside ``listen_ns`` compares and
    unlinks it (never resolved from here)."""
    if identity is None:
        return
    if listen_ns.mnt is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
        return
    try:
        helper = await NamespaceHelper.spawn(listen_ns)
    except OSError:
        return
    try:
        await helper.unlink(path, identity)
    except OSError:
        pass
    finally:
        await helper.close()


def _connect_started(sock: socket.socket, sockaddr: object) -> bool:
    """connect_ex on a non-blocking socket: True if connected already, False if in progress;
    raises OSError if it failed."""
    err = sock.connect_ex(sockaddr)  # type: ignore[arg-type]
    if err == 0:
        return True
    if err not in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
        raise OSError(err, os.strerror(err))
    # To a target on loopback (the usual 127.0.0.1 inside the instance) the handshake has
    # completed by the time connect() returns: one getpeername then saves a writer
    # registration, its poll handle and a loop round trip per connection.
    try:
        sock.getpeername()
    except OSError:  # ENOTCONN: still in progress, or refused already
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err)) from None
        return False
    return True


def _dial_failed(what: str, exc: OSError) -> ConnectFailed:
    reason = go_strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    return ConnectFailed(f"{what}: connect: {reason}")


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if not fut.done():
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
