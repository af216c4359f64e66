"""Daemon side of the namespace helper process (see helper_main)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from lxdproxy.netns.namespaces import Namespaces
from lxdproxy.netns.protected_paths import ProtectedPaths

_TYPE_NAMES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}


class NamespaceHelper:
    """A child process inside (user, mount, net) namespaces, optionally running as uid/gid."""

    def __init__(self, proc: subprocess.Popen[bytes], chan: socket.socket, ns: Namespaces) -> None:
        self._proc = proc
        self._chan = chan
        self._lock = threading.Lock()
        self.namespaces = ns

    @classmethod
    def spawn_sync(cls, ns: Namespaces, *, uid: int | None = None, gid: int | None = None) -> NamespaceHelper:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lxdproxy.netns.helper_main", str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
        finally:
            child.close()
        helper = cls(proc, parent, ns)
        cfg = {"user": ns.user, "mnt": ns.mnt, "net": ns.net, "uid": uid, "gid": gid}
        try:
            helper._request_raw(cfg)
        except OSError:
            helper.close_sync()
            raise
        return helper

    @classmethod
    async def spawn(cls, ns: Namespaces, *, uid: int | None = None, gid: int | None = None) -> NamespaceHelper:
        return await asyncio.to_thread(cls.spawn_sync, ns, uid=uid, gid=gid)

    def _request_raw(self, req: dict[str, Any]) -> socket.socket | None:
        return self._exchange(req)[0]

    def _exchange(self, req: dict[str, Any]) -> tuple[socket.socket | None, dict[str, Any]]:
        with self._lock:
            self._chan.sendall(json.dumps(req).encode())
            msg, fds, _flags, _addr = socket.recv_fds(self._chan, 65536, 1)
        if not msg:
            raise ConnectionError("namespace helper exited")
        reply = json.loads(msg)
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise OSError(reply.get("errno") or 0, reply.get("error", "namespace helper failed"))
        if reply.get("fd"):
            return socket.socket(fileno=fds[0]), reply
        return None, reply

    def request(self, op: str, **kw: Any) -> socket.socket | None:
        return self._request_raw({"op": op, **kw})

    async def arequest(self, op: str, **kw: Any) -> socket.socket | None:
        return await asyncio.to_thread(self.request, op, **kw)

    async def bind_unix(self, path: str, sock_type: int = socket.SOCK_STREAM, *, uid: int | None = None,
                        gid: int | None = None, mode: int | None = None,
                        listen_backlog: int = 4096) -> socket.socket:
        sock, _identity = await self.bind_unix_file(path, sock_type, uid=uid, gid=gid, mode=mode,
                                                    listen_backlog=listen_backlog)
        return sock

    async def bind_unix_file(self, path: str, sock_type: int = socket.SOCK_STREAM, *,
                             uid: int | None = None, gid: int | None = None,
                             mode: int | None = None, listen_backlog: int = 4096,
                             protected: ProtectedPaths | None = None
                             ) -> tuple[socket.socket, tuple[int, int] | None]:
        """Bind a unix socket at ``path`` (never over a live socket, never at a protected path);
        returns it with the (st_dev, st_ino) of the socket file, for ``unlink``."""
        req: dict[str, Any] = {"op": "bind_unix", "path": path, "type": _TYPE_NAMES[sock_type],
                               "uid": uid, "gid": gid, "backlog": listen_backlog}
        if mode is not None:
            req["mode"] = mode
        if protected is not None:
            req["protected"] = protected.to_request()
        sock, reply = await asyncio.to_thread(self._exchange, req)
        assert sock is not None
        identity = reply.get("identity")
        return sock, (identity[0], identity[1]) if identity else None

    async def bind_inet(self, family: int, sock_type: int, host: str, port: int, *,
                        dual_stack: bool = False, listen_backlog: int = 4096) -> socket.socket:
        """A tcp/udp listener bound (and listening, for tcp) by the helper, with its ids."""
        sock = await self.arequest("bind_inet", family=int(family), type=_TYPE_NAMES[sock_type],
                                   host=host, port=port, dual_stack=dual_stack,
                                   backlog=listen_backlog)
        assert sock is not None
        return sock

    async def connect_unix(self, path: str, sock_type: int = socket.SOCK_STREAM,
                           timeout: float = 5.0) -> socket.socket:
        sock = await self.arequest("connect_unix", path=path, type=_TYPE_NAMES[sock_type], timeout=timeout)
        assert sock is not None
        return sock

    async def connect_inet(self, family: int, sock_type: int, host: str, port: int,
                           timeout: float = 5.0) -> socket.socket:
        sock = await self.arequest("connect_inet", family=int(family), type=_TYPE_NAMES[sock_type],
                                   host=host, port=port, timeout=timeout)
        assert sock is not None
        return sock

    async def socket(self, family: int, sock_type: int) -> socket.socket:
        sock = await self.arequest("socket", family=int(family), type=_TYPE_NAMES[sock_type])
        assert sock is not None
        return sock

    async def unlink(self, path: str, identity: tuple[int, int] | None = None) -> None:
        """Remove the socket file at ``path`` if it is still the one with that identity."""
        await self.arequest("unlink", path=path, identity=list(identity) if identity else None)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close_sync(self) -> None:
        try:
            self._chan.close()
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)
