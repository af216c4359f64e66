"""The composition root: one DaemonConfig -> store + backend + data plane + NAT + manager + API.

Start order: open the store, pick the backend, find (or spawn) the data plane's workers,
reconcile (every stored proxy device of every running instance is realised; failures are
warnings, not fatal; what the workers run and nobody wants is stopped), then listen.

Stop: SIGTERM/SIGINT detach the control plane: the workers keep every listener and connection,
NAT rules and unix socket files stay, and the next control plane changes only what differs.
``PUT /internal/shutdown`` (``lxdproxy shutdown``) stops every device and the workers too. With
``workers=0`` the daemon forwards itself, and any stop stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lxdproxy.api.app import create_app
from lxdproxy.api.internal import InternalControl, add_internal_routes
from lxdproxy.api.lazy_trust import LazyTrustStore
from lxdproxy.api.metrics import device_collector
from lxdproxy.api.server import ApiLimits, ApiServer
from lxdproxy.errors import LxdError, NotSupportedError
from lxdproxy.forward.budget import TrafficBudget, TrafficLimits, raise_nofile_limit
from lxdproxy.forward.forwarder import Forwarder
from lxdproxy.forward.limits import CONNECT_TIMEOUT, UDP_IDLE_TIMEOUT
from lxdproxy.forward.stream_relay import RelayMode
from lxdproxy.instances.backend import InstanceBackend
from lxdproxy.instances.local import LocalBackend
from lxdproxy.manager.runtime import DeviceRuntime
from lxdproxy.manager.service import DeviceManager
from lxdproxy.nat.rules import DEFAULT_TABLE
from lxdproxy.nat.runtime import NatRuntime
from lxdproxy.netns import Namespaces
from lxdproxy.netns.protected_paths import ProtectedPaths
from lxdproxy.state_dir import prepare_state_dir
from lxdproxy.store import Store
from lxdproxy.warning_registry import WarningRegistry
from lxdproxy.workers import WorkerPool
from lxdproxy.workers.link import REQUEST_TIMEOUT

if TYPE_CHECKING:
    from lxdproxy.api.tls import TrustStore

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/lxdproxy")


class DaemonError(Exception):
    """A startup problem the user must fix (printed without a traceback)."""


@dataclass(frozen=True)
class DaemonConfig:
    """Every tunable of the daemon, with its default, in one place."""

    state_dir: Path = DEFAULT_STATE_DIR
    socket_path: Path | None = None  # default: <state_dir>/unix.socket
    socket_mode: int = 0o660
    https: tuple[str, int] | None = None
    lxd: str | None = None  # LXD unix socket path or URL: use the LXD backend
    nft_table: str = DEFAULT_TABLE
    host_netns: str | None = None  # what stands for "the host": a named netns or nsfs path
    local_poll_interval: float = 1.0  # local instances: pid/netns liveness poll (pidfd wakes too)
    lxd_poll_interval: float = 2.0  # LXD backend: instance list poll
    nat_repair_interval: float = 10.0  # seconds between checks that our NAT rules still exist
    device_retry_interval: float = 5.0  # retrying stored devices that failed to start
    connect_timeout: float = CONNECT_TIMEOUT  # dialing a proxy target
    udp_idle_timeout: float = UDP_IDLE_TIMEOUT  # LXD's 30 minutes
    traffic_limits: TrafficLimits = TrafficLimits()  # fd reserve, connection and session caps
    api_limits: ApiLimits = ApiLimits()  # header/body/handshake timeouts, connection caps
    workers: int | None = None  # data-plane worker processes; None = one per CPU, 0 = in-process
    drain_timeout: float | None = None  # reload: how long old workers may finish connections
    udp_spread: bool = True  # UDP sessions spread over the workers by client address (eBPF)
    relay: RelayMode = RelayMode.COPY  # streams: 1 MiB copies (measured ahead of splice here)
    worker_request_timeout: float = REQUEST_TIMEOUT  # a worker silent this long is replaced
    log_level: str = "INFO"  # the workers log at this level too
    use_uvloop: bool = True

    @property
    def unix_socket(self) -> Path:
        return self.socket_path or self.state_dir / "unix.socket"


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise DaemonError(f"Invalid --https address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "::", int(port)


def _claim_socket_path(path: Path) -> None:
    """Remove a stale socket left by a killed daemon; refuse if a live daemon answers on it."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise DaemonError(f"Another daemon is already listening on {path}")
    finally:
        probe.close()


@dataclass
class Components:
    """What the root builds; tests build theirs through ``build_components`` too."""

    store: Store
    backend: InstanceBackend
    runtime: DeviceRuntime
    warnings: WarningRegistry
    manager: DeviceManager
    pool: WorkerPool | None  # None: the in-process Forwarder is the data plane

    async def close(self, *, detach: bool = False) -> None:
        """``detach``: leave the workers (and the NAT rules) running for the next control
        plane; otherwise stop every device and the workers."""
        await self.manager.close()
        await self.runtime.nat.close()
        if detach and self.pool is not None:
            self.pool.detach()
        else:
            await self.runtime.stop_all()
            if self.pool is not None:
                await self.pool.shutdown()
        await self.backend.close()
        self.store.close()


async def build_components(config: DaemonConfig, store: Store, *,
                           fd_limit: int | None = None) -> Components:
    """Everything below the API, wired from ``config``; finds the workers a previous control
    plane left running. ``fd_limit``: the fds the process may use (None: its soft limit)."""
    backend: InstanceBackend
    if config.lxd:
        # Imported only here: pylxd (requests, cryptography) costs the control plane ~10 MiB of
        # RSS that the embedded default never needs.
        from lxdproxy.instances.lxd import LxdBackend

        backend = LxdBackend(config.lxd, store, poll_interval=config.lxd_poll_interval)
    else:
        backend = LocalBackend(store, poll_interval=config.local_poll_interval)
    host_ns = Namespaces.of_netns(config.host_netns) if config.host_netns else None
    nat = NatRuntime(net_path=host_ns.net if host_ns else None, table=config.nft_table,
                     repair_interval=config.nat_repair_interval)
    protected = ProtectedPaths.of_daemon(config.state_dir, config.unix_socket)
    pool: WorkerPool | None = None
    dataplane: WorkerPool | Forwarder
    if config.workers == 0:
        dataplane = Forwarder(connect_timeout=config.connect_timeout,
                              udp_idle_timeout=config.udp_idle_timeout, protected_paths=protected,
                              budget=TrafficBudget(replace(
                                  config.traffic_limits,
                                  fds_per_connection=config.relay.fds_per_connection), fd_limit),
                              relay=config.relay)
    else:
        dataplane = pool = WorkerPool(config.state_dir, workers=config.workers,
                                      drain_timeout=config.drain_timeout,
                                      log_level=config.log_level,
                                      connect_timeout=config.connect_timeout,
                                      udp_idle_timeout=config.udp_idle_timeout,
                                      protected_paths=protected,
                                      request_timeout=config.worker_request_timeout,
                                      udp_spread=config.udp_spread, relay=config.relay)
        await pool.open()
    warnings = WarningRegistry(store)
    runtime = DeviceRuntime(dataplane, nat, addresses=backend, waits=warnings, host_ns=host_ns)
    manager = DeviceManager(backend, runtime, warnings, retry_interval=config.device_retry_interval)
    return Components(store, backend, runtime, warnings, manager, pool)


def build_app(components: Components, *, info: dict[str, Any] | None = None,
              trust: TrustStore | None = None,
              control: InternalControl | None = None) -> web.Application:
    """The API over ``components``; ``info``: TLS certificate and addresses for GET /1.0;
    ``control``: the daemon's own /internal endpoints."""
    metrics = device_collector(components.runtime, components.warnings, components.store)
    app = create_app(components.manager, info={"backend_kind": components.backend.kind,
                                               **(info or {})},
                     trust=trust, warnings=components.warnings, metrics=metrics)
    if control is not None:
        add_internal_routes(app, control)
    return app


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.components: Components | None = None
        self._runner: web.AppRunner | None = None
        self._lock_fd: int | None = None
        self._own_socket = False
        self._retry: asyncio.Task[None] | None = None
        self._api: ApiServer | None = None
        # Set by PUT /internal/shutdown: stop everything. Otherwise (SIGTERM, SIGINT) the
        # control plane detaches and the workers keep every listener and connection.
        self.full_stop = False
        self.stop_requested = asyncio.Event()

    def _lock_state_dir(self) -> None:
        # Two daemons on one state dir would both realise every device: refuse the second.
        fd = os.open(self.config.state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DaemonError("Another daemon is already running with state directory "
                              f"{self.config.state_dir}") from None
        self._lock_fd = fd

    async def start(self) -> None:
        cfg = self.config
        fd_limit = raise_nofile_limit()
        prepare_state_dir(cfg.state_dir, cfg.unix_socket)
        self._lock_state_dir()
        _claim_socket_path(cfg.unix_socket)
        cfg.unix_socket.parent.mkdir(parents=True, exist_ok=True)  # ProtectedPaths stats it
        components = await build_components(cfg, Store(cfg.state_dir / "lxdproxy.db"),
                                            fd_limit=fd_limit)
        self.components = components
        if not await components.manager.reconcile():
            # The backend (a real LXD) is not reachable yet: serve anyway and keep trying.
            self._retry = asyncio.get_running_loop().create_task(
                components.manager.reconcile_until_done())

        trust, ssl_ctx, info = None, None, {}
        if cfg.https:
            trust, ssl_ctx, info = self._tls(cfg.https)
        app = build_app(components, info=info,
                        trust=trust if trust is not None else LazyTrustStore(cfg.state_dir),
                        control=InternalControl(shutdown=self._request_shutdown,
                                                reload=self._reload))
        ApiServer.install(app, cfg.api_limits)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=cfg.api_limits.keepalive_timeout)
        await self._runner.setup()
        self._api = ApiServer(self._runner, cfg.api_limits, trust=trust)

        old_umask = os.umask(0o177)  # no window in which the socket is world-accessible
        try:
            await self._api.start_unix(str(cfg.unix_socket))
            self._own_socket = True
        finally:
            os.umask(old_umask)
        os.chmod(cfg.unix_socket, cfg.socket_mode)
        if cfg.https and ssl_ctx is not None:
            host, port = cfg.https
            await self._api.start_tls(host, port, ssl_ctx)
        # Re-apply NAT rules that vanished behind our back (e.g. `nft flush ruleset`).
        components.runtime.nat.start_repair()
        components.manager.start_retrying()

    async def _request_shutdown(self) -> None:
        self.full_stop = True
        self.stop_requested.set()

    async def _reload(self) -> None:
        assert self.components is not None
        if self.components.pool is None:
            raise LxdError("Reload needs worker processes (the daemon runs with --workers 0)",
                           400)
        await self.components.pool.reload()

    @property
    def detaches(self) -> bool:
        return self.components is not None and self.components.pool is not None \
            and not self.full_stop

    def _tls(self, address: tuple[str, int]) -> tuple[TrustStore, Any, dict[str, Any]]:
        from lxdproxy.api import tls  # cryptography: only a daemon serving HTTPS needs it
        from lxdproxy.api.listen_addresses import interface_ips, listen_addresses

        state_dir = self.config.state_dir
        ssl_ctx = tls.server_ssl_context(state_dir)
        host, port = address
        info = {
            "certificate_pem": tls.certificate_pem(state_dir),
            "certificate_fingerprint": tls.server_certificate_fingerprint(state_dir),
            "addresses": listen_addresses(host, port, interface_ips()),
        }
        return tls.TrustStore(state_dir), ssl_ctx, info

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._api is not None:
            await self._api.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_socket:
            with contextlib.suppress(FileNotFoundError):
                self.config.unix_socket.unlink()
        if self.components is not None:
            await self.components.close(detach=self.detaches)
        if self._lock_fd is not None:
            os.close(self._lock_fd)


async def serve(config: DaemonConfig, stop_event: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop_event``): then detach from the workers, which keep
    forwarding (with ``workers=0``: stop every device). ``PUT /internal/shutdown`` stops
    everything."""
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    daemon = Daemon(config)
    try:
        await daemon.start()
        print(f"lxdproxy: listening on {config.unix_socket}", flush=True)
        if config.https:
            print(f"lxdproxy: listening on https://{config.https[0]}:{config.https[1]}",
                  flush=True)
        waits = [asyncio.ensure_future(stop_event.wait()),
                 asyncio.ensure_future(daemon.stop_requested.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        log.info("detaching: the workers keep forwarding" if daemon.detaches else "shutting down")
    except NotSupportedError as exc:
        raise DaemonError(exc.message) from None
    finally:
        await daemon.stop()


def run(config: DaemonConfig) -> None:
    """Run ``serve`` on the configured event loop."""
    if config.use_uvloop:
        import uvloop

        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
