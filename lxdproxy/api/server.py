"""The API's listening sockets, with the bounds aiohttp's sites lack (issue 12: 1,162 TLS
clients that finished the handshake and never finished their headers were held for good, and
took the daemon's file descriptors with them).

- TLS handshake: bounded by ``handshake_timeout`` (the loop aborts a slower one);
- unauthenticated TLS connections (handshaking, or finished without a trusted client
  certificate) are capped: past the cap a new one is closed as soon as its handshake ends
  (asyncio gives no hook between accept and handshake); trusted clients do not count;
- the unix socket has a cap of its own;
- header timeout: a connection whose first request head has not ended within
  ``header_timeout`` is closed (aiohttp has none; later requests on a kept-alive connection
  are bounded by its keep-alive timeout, which closes a connection waiting for a head);
- body timeout: a middleware reads every body within ``body_timeout`` before the handler runs
  (408 otherwise); the size cap stays aiohttp's ``client_max_size`` (413).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lxdproxy.api.envelopes import error_response

log = logging.getLogger("lxdproxy.api.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class ApiLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 30.0
    handshake_timeout: float = 10.0
    max_unauthenticated_tls: int = 128
    max_unix_connections: int = 256


class _Pool:
    """A counted set of connections with a cap; refusals counted and logged once per 10 s."""

    def __init__(self, what: str, cap: int) -> None:
        self.what = what
        self.cap = cap
        self.count = 0
        self.refused = 0
        self._logged_at = -1e9

    def take(self) -> bool:
        if self.count >= self.cap:
            self.refused += 1
            now = asyncio.get_running_loop().time()
            if now - self._logged_at >= 10.0:
                self._logged_at = now
                log.warning("%s: %d connections open, the most allowed: refusing new ones "
                            "(%d refused so far)", self.what, self.count, self.refused)
            return False
        self.count += 1
        return True

    def give_back(self) -> None:
        self.count -= 1


class _GuardedConnection(asyncio.Protocol):
    """Sits between the transport and aiohttp's RequestHandler: counts the connection and
    enforces the header timeout.

    Over TLS, asyncio builds this protocol at accept time but calls ``connection_made`` only
    once the handshake is done (and ``connection_lost`` only if it was): a connection is
    counted from its accept, and given back at ``connection_lost`` or, for a handshake that
    never completed (the loop aborts it after ``handshake_timeout``), at a deadline just
    after that."""

    def __init__(self, server: ApiServer, pool: _Pool, *, tls: bool) -> None:
        self._server = server
        self._pool = pool
        self._tls = tls
        self._counted = pool.take()
        self._handler: Any = None
        self._transport: asyncio.BaseTransport | None = None
        self._head_seen = False
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        if tls:
            self._deadline = asyncio.get_running_loop().call_later(
                server.limits.handshake_timeout + 1.0, self._release)

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if not self._counted:
            transport.abort()  # over the cap: closed at once (after the handshake, for TLS)
            return
        self._transport = transport
        if self._tls and self._server.is_trusted(transport):
            self._release()  # a trusted client is not held against the unauthenticated cap
        self._serve(transport)

    def _serve(self, transport: asyncio.BaseTransport) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            self._server.limits.header_timeout, self._head_timed_out)
        self._handler = self._server.handler_factory()
        self._handler.connection_made(transport)

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self._head_seen and self._transport is not None:
            self._server.head_timeouts += 1
            self._transport.abort()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self._pool.give_back()

    # -- data ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self._head_seen:
            window = self._tail + data
            if _HEAD_END in window:
                self._head_seen = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            else:
                self._tail = window[-3:]
        if self._handler is not None:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()
        if self._handler is not None:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()


def body_deadline(limits: ApiLimits) -> Any:
    """Middleware: the whole body within ``body_timeout`` (aiohttp caches it for the handler)."""

    @web.middleware
    async def read_body_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(limits.body_timeout):
                    await request.read()
            except TimeoutError:
                response = error_response("Timed out reading the request body", 408)
                response.force_close()
                return response
        return await handler(request)

    return read_body_in_time


class ApiServer:
    """The daemon's API sockets over one aiohttp ``AppRunner`` (set up by the caller)."""

    def __init__(self, runner: web.AppRunner, limits: ApiLimits | None = None, *,
                 trust: Any = None) -> None:
        self.limits = limits or ApiLimits()
        self._runner = runner
        self._trust = trust
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.unix_pool = _Pool("API unix socket", self.limits.max_unix_connections)
        self.tls_pool = _Pool("API over TLS (unauthenticated)", self.limits.max_unauthenticated_tls)
        self.head_timeouts = 0

    @staticmethod
    def install(app: web.Application, limits: ApiLimits) -> None:
        """Add the body deadline to ``app`` (before the runner's setup freezes it)."""
        app.middlewares.append(body_deadline(limits))

    def handler_factory(self) -> Any:
        server = self._runner.server
        assert server is not None, "AppRunner.setup() first"
        return server()

    def is_trusted(self, transport: asyncio.BaseTransport) -> bool:
        if self._trust is None:
            return False
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return bool(der) and bool(self._trust.is_trusted(der))

    async def start_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(
            lambda: _GuardedConnection(self, self.unix_pool, tls=False), path, backlog=128))

    async def start_tls(self, host: str, port: int, ssl_ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(
            lambda: _GuardedConnection(self, self.tls_pool, tls=True), host, port, ssl=ssl_ctx,
            ssl_handshake_timeout=self.limits.handshake_timeout, backlog=128,
            reuse_address=True))

    def stats(self) -> dict[str, int]:
        return {"unix_connections": self.unix_pool.count, "unix_refused": self.unix_pool.refused,
                "tls_unauthenticated": self.tls_pool.count, "tls_refused": self.tls_pool.refused,
                "header_timeouts": self.head_timeouts}

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
