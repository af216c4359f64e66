"""The daemon: store + instance backend + device runtime + API, on one asyncio loop.

Start order: open the store, pick the backend, reconcile (every stored proxy device of every
running instance is realised; failures are logged, not fatal), then listen. Stop order: stop
listening, stop every device (NAT rules removed, host unix sockets unlinked), close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from lxdproxy.api.app import create_app
from lxdproxy.api.internal import InternalControl, add_internal_routes
from lxdproxy.api.operations import OperationRegistry
from lxdproxy.errors import LxdError, NotSupportedError
from lxdproxy.manager.runtime import DeviceRuntime
from lxdproxy.manager.service import InstanceService
from lxdproxy.store import Store
from lxdproxy.workers import WorkerPool

log = logging.getLogger("lxdproxy.daemon")

DEFAULT_STATE_DIR = Path("/var/lib/lxdproxy")


class DaemonError(Exception):
    """A startup problem the user must fix (printed without a traceback)."""


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    socket_path: Path | None = None  # default: <state_dir>/unix.socket
    socket_mode: int = 0o660
    https: tuple[str, int] | None = None
    lxd: str | None = None  # LXD unix socket path or URL: use the LXD backend
    nft_table: str = "lxdproxy"
    poll_interval: float = 1.0
    nat_repair_interval: float = 10.0  # seconds between checks that our NAT rules still exist
    workers: int | None = None  # data-plane worker processes; None = one per CPU, 0 = in-process
    drain_timeout: float | None = None  # reload: how long old workers may finish connections
    log_level: str = "INFO"

    @property
    def unix_socket(self) -> Path:
        return self.socket_path or self.state_dir / "unix.socket"


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise DaemonError(f"Invalid --https address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "::", int(port)


def _make_backend(config: DaemonConfig, store: Store) -> Any:
    if config.lxd:
        try:
            from lxdproxy.instances.lxd import LxdBackend  # type: ignore[import-not-found]
        except ImportError as exc:
            raise DaemonError(f"--lxd is not supported in this build: {exc}") from None
        return LxdBackend(config.lxd)
    from lxdproxy.instances.local import LocalBackend

    return LocalBackend(store, poll_interval=config.poll_interval)


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


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.backend: Any = None
        self.runtime: DeviceRuntime | None = None
        self.service: InstanceService | None = None
        self._runner: web.AppRunner | None = None
        self._lock_fd: int | None = None
        self._own_socket = False
        self._retry: asyncio.Task[None] | None = None
        self._nat_repair: asyncio.Task[None] | None = None
        self.pool: WorkerPool | None = None
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
        if not cfg.state_dir.exists():
            # Only a directory we create gets our mode; never chmod one the user pointed us at.
            cfg.state_dir.mkdir(parents=True, mode=0o711)
        self._lock_state_dir()
        _claim_socket_path(cfg.unix_socket)
        self.store = Store(cfg.state_dir / "lxdproxy.db")
        self.backend = _make_backend(cfg, self.store)
        if cfg.workers != 0:
            self.pool = WorkerPool(cfg.state_dir, workers=cfg.workers,
                                   drain_timeout=cfg.drain_timeout, log_level=cfg.log_level)
            await self.pool.open()  # finds the workers a previous control plane left running
        self.runtime = DeviceRuntime(nft_table=cfg.nft_table, forwarder=self.pool)
        self.service = InstanceService(self.backend, self.store, self.runtime)
        if await self.service.reconcile():
            await self._stop_unwanted_forwards()
        else:
            # The backend (a real LXD) is not reachable yet: serve anyway and keep trying.
            self._retry = asyncio.get_running_loop().create_task(
                self.service.reconcile_until_done())

        trust, ssl_ctx, info = None, None, {}
        if cfg.https:
            trust, ssl_ctx, info = self._tls()
        app = create_app(self.service, OperationRegistry(), info=info, trust=trust)
        add_internal_routes(app, InternalControl(shutdown=self._request_shutdown,
                                                 reload=self._reload))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()

        cfg.unix_socket.parent.mkdir(parents=True, exist_ok=True)
        old_umask = os.umask(0o177)  # no window in which the socket is world-accessible
        try:
            await web.UnixSite(self._runner, str(cfg.unix_socket)).start()
            self._own_socket = True
        finally:
            os.umask(old_umask)
        os.chmod(cfg.unix_socket, cfg.socket_mode)
        if cfg.https and ssl_ctx is not None:
            host, port = cfg.https
            await web.TCPSite(self._runner, host, port, ssl_context=ssl_ctx).start()
        # Re-apply NAT rules that vanished behind our back (e.g. `nft flush ruleset`).
        from lxdproxy.nat import runtime as nat_runtime

        self._nat_repair = asyncio.get_running_loop().create_task(
            nat_runtime.watch(cfg.nat_repair_interval))

    async def _stop_unwanted_forwards(self) -> None:
        """After a restart the workers may run devices deleted meanwhile: reconcile started
        every wanted one (a no-op where the workers already run it); stop the rest."""
        if self.pool is None or self.runtime is None:
            return
        for key in list(self.pool.running()):
            if not self.runtime.is_running(*key):
                log.info("stopping device %s/%s: no longer wanted", *key)
                await self.pool.stop(key)

    async def _request_shutdown(self) -> None:
        self.full_stop = True
        self.stop_requested.set()

    async def _reload(self) -> None:
        if self.pool is None:
            raise LxdError("Reload needs worker processes (the daemon runs with --workers 0)",
                           400)
        await self.pool.reload()

    def _tls(self) -> tuple[Any, Any, dict[str, Any]]:
        try:
            from lxdproxy.api import tls  # type: ignore[attr-defined]

            ssl_ctx = tls.server_ssl_context(self.config.state_dir)
            trust = tls.TrustStore(self.config.state_dir)
        except (ImportError, AttributeError) as exc:
            raise DaemonError(f"--https is not supported in this build: {exc}") from None
        info: dict[str, Any] = {}
        pem_fn = getattr(tls, "server_certificate_pem", None)
        if callable(pem_fn):
            info["certificate_pem"] = pem_fn(self.config.state_dir)
        fp_fn = getattr(tls, "server_certificate_fingerprint", None)
        if callable(fp_fn):
            info["certificate_fingerprint"] = fp_fn(self.config.state_dir)
        host, port = self.config.https  # type: ignore[misc]
        info["addresses"] = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        return trust, ssl_ctx, info

    async def stop(self) -> None:
        for task in (self._retry, self._nat_repair):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_socket:
            with contextlib.suppress(FileNotFoundError):
                self.config.unix_socket.unlink()
        if self.service is not None:
            await self.service.close()
        detach = self.pool is not None and not self.full_stop
        if self.runtime is not None and not detach:
            await self.runtime.stop_all()
        if self.pool is not None:
            if detach:
                # NAT rules, unix socket files, listeners and connections stay for the next
                # control plane, which finds the workers and changes only what differs.
                self.pool.detach()
            else:
                await self.pool.shutdown()
        if self.backend is not None:
            await self.backend.close()
        if self.store is not None:
            self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)


async def serve(config: DaemonConfig, stop_event: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop_event``): then detach from the workers, which keep
    forwarding (with ``workers=0``: stop every device). ``PUT /internal/shutdown`` stops
    everything."""
    import signal

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
        log.info("shutting down" if daemon.full_stop or daemon.pool is None else
                 "detaching: the workers keep forwarding")
    except NotSupportedError as exc:
        raise DaemonError(exc.message) from None
    finally:
        await daemon.stop()
