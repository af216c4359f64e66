"""The control plane's end of one worker: spawn it, connect, say hello, send requests.

A worker is started detached (new session, stdio on a log file and /dev/null, cwd /), so
neither a signal to the control plane's process group nor the loss of its terminal or pipes
reaches it. Its control socket lives in ``<state-dir>/workers/`` under a name no other worker
uses, so a worker that exits can remove its own socket file without racing a replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lxdproxy.workers.channel import Channel, ChannelClosed
from lxdproxy.workers.protocol import Envelope, Hello, Message, ProtocolError, Reply

log = logging.getLogger("lxdproxy.workers")

SPAWN_TIMEOUT = 20.0  # a worker imports lxdproxy.forward and uvloop: well under a second
# A worker answers every request from its loop in milliseconds; one that has not answered in this
# long is hung (stopped, spinning, wedged in a system call), and waiting on it would wedge the
# control plane: the API, reconcile and every other device's changes.
REQUEST_TIMEOUT = 30.0


class WorkerGone(ConnectionError):
    """The worker's control connection closed (it exited or was killed)."""


class WorkerLink:
    def __init__(self, path: Path, channel: Channel, hello: Hello,
                 proc: subprocess.Popen[bytes] | None = None, *,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.path = path
        self.request_timeout = request_timeout
        self.channel = channel
        self.pid = hello.pid
        self.generation = hello.generation
        self.index = hello.index
        self.draining = hello.draining
        self.proc = proc  # set when this control plane started it (to reap it)
        self.closed = False
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[tuple[Reply, list[int]]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.on_lost: Callable[[WorkerLink], None] | None = None

    def __repr__(self) -> str:
        return f"worker {self.generation}.{self.index} (pid {self.pid})"

    # -- life ---------------------------------------------------------------------------------
    @classmethod
    async def connect(cls, path: Path, *, pid: int, generation: int,
                      proc: subprocess.Popen[bytes] | None = None,
                      request_timeout: float = REQUEST_TIMEOUT) -> WorkerLink:
        """Connect and exchange hellos. Raises OSError (nobody there) or ProtocolError."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, str(path))
        except BaseException:
            sock.close()
            raise
        chan = Channel(sock)
        try:
            await chan.send(Envelope(0, Hello(pid=pid, generation=generation)))
            env, fds = await asyncio.wait_for(chan.recv(), SPAWN_TIMEOUT)
        except (ChannelClosed, TimeoutError) as exc:
            chan.close()
            raise ConnectionRefusedError(f"worker at {path} did not answer: {exc}") from None
        except BaseException:
            chan.close()
            raise
        for fd in fds:
            os.close(fd)
        if isinstance(env.message, Reply) and not env.message.ok:
            chan.close()
            raise ProtocolError(env.message.error or "worker refused the hello")
        if not isinstance(env.message, Hello):
            chan.close()
            raise ProtocolError(f"worker answered hello with {env.message.kind!r}")
        link = cls(path, chan, env.message, proc, request_timeout=request_timeout)
        link._reader = asyncio.get_running_loop().create_task(link._read())
        return link

    @classmethod
    async def spawn(cls, directory: Path, *, generation: int, index: int,
                    options: Sequence[str] = (),
                    request_timeout: float = REQUEST_TIMEOUT) -> WorkerLink:
        """A new worker process; ``options``: its tunables (``--log-level`` ...)."""
        path = directory / f"w{generation}.{index}.{secrets.token_hex(3)}.sock"
        log_path = directory / f"w{generation}.{index}.log"
        with open(log_path, "ab") as log_file:
            # start_new_session: outside the control plane's session and process group, so
            # SIGTERM/SIGKILL to the daemon's group (a terminal's ^C, systemd's control group
            # kill with KillMode=mixed) never reaches it.
            proc = subprocess.Popen(
                [sys.executable, "-m", "lxdproxy.workers.worker_main", "--socket", str(path),
                 "--generation", str(generation), "--index", str(index), *options],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file,
                start_new_session=True, close_fds=True, cwd="/",
            )
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise OSError(f"worker exited at start (status {proc.returncode}); "
                              f"see {log_path}")
            try:
                return await cls.connect(path, pid=os.getpid(), generation=generation,
                                         proc=proc, request_timeout=request_timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise OSError(f"worker did not start in {SPAWN_TIMEOUT:.0f} s; "
                                  f"see {log_path}") from None
                await asyncio.sleep(0.02)

    async def _read(self) -> None:
        try:
            while True:
                env, fds = await self.channel.recv()
                fut = self._pending.pop(env.id, None)
                if fut is None or fut.done() or not isinstance(env.message, Reply):
                    for fd in fds:
                        os.close(fd)
                    if isinstance(env.message, Reply) and not env.message.ok and env.id == 0:
                        log.error("%r: %s", self, env.message.error)
                    continue
                fut.set_result((env.message, fds))
        except (ChannelClosed, ProtocolError, OSError) as exc:
            if isinstance(exc, ProtocolError):
                log.error("%r: %s", self, exc)
        finally:
            self._lost()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.channel.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerGone(f"{self!r} is gone"))
        self._pending.clear()
        self.reap()
        if self.on_lost is not None:
            self.on_lost(self)

    def reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None

    # -- requests -----------------------------------------------------------------------------
    async def request(self, msg: Message, fds: list[int] | tuple[int, ...] = ()
                      ) -> tuple[Reply, list[int]]:
        """Send a request; the reply and the fds that came with it (the caller owns them)."""
        if self.closed:
            raise WorkerGone(f"{self!r} is gone")
        ident, self._next_id = self._next_id, self._next_id + 1
        fut: asyncio.Future[tuple[Reply, list[int]]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        try:
            await self.channel.send(Envelope(ident, msg), fds)
        except ChannelClosed:
            self._pending.pop(ident, None)
            raise WorkerGone(f"{self!r} is gone") from None
        try:
            return await asyncio.wait_for(fut, self.request_timeout)
        except TimeoutError:
            self._hung(msg)
            raise WorkerGone(f"{self!r} did not answer {msg.kind!r} in "
                             f"{self.request_timeout:g} s") from None

    def _hung(self, msg: Message) -> None:
        """No answer in time: kill the worker and treat it as dead (``on_lost`` replaces it).
        Its connections are lost, as with a crash; the listeners live on in the others."""
        if self.closed:
            return
        log.error("%r did not answer %r in %g s: killing it", self, msg.kind, self.request_timeout)
        self.kill()
        self._lost()

    async def call(self, msg: Message) -> object:
        """A request whose reply carries no fds; raises WorkerError on ``ok: false``."""
        reply, fds = await self.request(msg)
        for fd in fds:
            os.close(fd)
        if not reply.ok:
            raise WorkerError(reply.error or "worker error", start_error=reply.start_error)
        return reply.result

    def detach(self) -> None:
        """Forget the worker without telling it anything: it keeps running."""
        self.on_lost = None
        self.closed = True
        if self._reader is not None:
            self._reader.cancel()
        self.channel.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerGone(f"{self!r} detached"))

    async def wait_exit(self, timeout: float) -> bool:
        """Wait until the worker process is gone (True) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    return True
            elif not _alive(self.pid):
                return True
            await asyncio.sleep(0.02)
        return False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)


class WorkerError(Exception):
    def __init__(self, message: str, *, start_error: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.start_error = start_error


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a zombie has let go of every socket)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != b"Z"
