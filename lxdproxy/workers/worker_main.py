"""A data-plane worker: ``python -m lxdproxy.workers.worker_main --socket PATH --generation G --index I``.

It serves its control socket (mode 0600) and runs the devices the control plane sends it, on
listening sockets received over SCM_RIGHTS; outgoing sockets it makes itself (netns threads and
setns batches, see forward/socket_pool.py; namespace helpers). Started in its own session with
no tie to the control plane's stdio, it keeps forwarding when the control plane stops, crashes
or is upgraded; a new control plane connects to the same socket. It exits when told (shutdown),
once drained, or on SIGTERM (which stops every device, as shutdown does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

import uvloop

from lxdproxy.errors import DeviceStartError
from lxdproxy.forward.budget import TrafficBudget, TrafficLimits, raise_nofile_limit
from lxdproxy.forward.limits import CONNECT_TIMEOUT, UDP_IDLE_TIMEOUT
from lxdproxy.forward.stream_relay import STREAM_MODES, RelayMode
from lxdproxy.workers.channel import Channel, ChannelClosed
from lxdproxy.workers.device_table import DeviceTable
from lxdproxy.workers.protocol import (
    Drain,
    Envelope,
    Hello,
    ListDevices,
    Listeners,
    Message,
    ProtocolError,
    Reply,
    Shutdown,
    Start,
    Stats,
    Stop,
    spec_to_json,
)

log = logging.getLogger("lxdproxy.worker")


class Worker:
    def __init__(self, socket_path: str, generation: int, index: int, table: DeviceTable) -> None:
        self.socket_path = socket_path
        self.generation = generation
        self.index = index
        self.table = table
        self.draining = False
        self._done = asyncio.Event()
        self._server: socket.socket | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self._on_sigterm)
        self._server = _bind_control_socket(self.socket_path)
        loop.add_reader(self._server.fileno(), self._on_connect)
        log.info("worker generation %d listening on %s", self.generation, self.socket_path)
        try:
            await self._done.wait()
        finally:
            loop.remove_reader(self._server.fileno())
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)  # the name is ours alone (the pool makes it unique)
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await self.table.stop_all()

    def _on_sigterm(self) -> None:
        self._spawn(self._shutdown())

    def _on_connect(self) -> None:
        assert self._server is not None
        try:
            conn, _ = self._server.accept()
        except (BlockingIOError, InterruptedError):
            return
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _serve(self, conn: socket.socket) -> None:
        chan = Channel(conn)
        try:
            while True:
                env, fds = await chan.recv()
                reply, out_fds = await self._handle(env.message, fds)
                try:
                    await chan.send(Envelope(env.id, reply), out_fds)
                finally:
                    for fd in out_fds:
                        os.close(fd)
                if isinstance(env.message, Shutdown):
                    self._done.set()
        except ChannelClosed:
            pass
        except ProtocolError as exc:
            # A control plane of another version: say so (it may read this much) and hang up.
            log.error("control connection: %s", exc)
            with contextlib.suppress(OSError, ChannelClosed):
                await chan.send(Envelope(0, Reply(ok=False, error=str(exc))))
        finally:
            chan.close()

    async def _handle(self, msg: Message, fds: list[int]) -> tuple[Message, list[int]]:
        if isinstance(msg, Hello):
            return Hello(pid=os.getpid(), generation=self.generation, index=self.index,
                         draining=self.draining), []
        if isinstance(msg, Start):
            try:
                changed = await self.table.start(msg.spec, fds, udp_owner=msg.udp_owner,
                                                 udp_maps=msg.udp_maps)
            except DeviceStartError as exc:
                return Reply(ok=False, error=exc.message, start_error=True), []
            return Reply(result={"changed": changed}), []
        for fd in fds:  # no other message carries fds: never leak what a peer sent
            os.close(fd)
        if isinstance(msg, Stop):
            return Reply(result={"stopped": await self.table.stop(msg.key)}), []
        if isinstance(msg, Listeners):
            try:
                fds, maps = self.table.listener_fds(msg.key)
                return Reply(result={"udp_maps": maps}), fds
            except KeyError:
                return Reply(ok=False, error=f"device {msg.key[0]}/{msg.key[1]} is not running"), []
        if isinstance(msg, ListDevices):
            return Reply(result=[{"spec": spec_to_json(spec), "udp_owner": owner,
                                  "udp_maps": maps}
                                 for spec, owner, maps in self.table.specs()]), []
        if isinstance(msg, Stats):
            counters = [[*key, snapshot] for key, snapshot in self.table.device_counters().items()]
            return Reply(result={**self.table.stats(), "pid": os.getpid(),
                                 "generation": self.generation, "draining": self.draining,
                                 "device_counters": counters}), []
        if isinstance(msg, Drain):
            if not self.draining:
                self.draining = True
                self._spawn(self._drain(msg.timeout))
            return Reply(), []
        if isinstance(msg, Shutdown):
            self.draining = True
            await self.table.stop_all()
            return Reply(), []
        return Reply(ok=False, error=f"unexpected message {msg.kind!r}"), []

    async def _drain(self, timeout: float | None) -> None:
        await self.table.drain(timeout)
        log.info("drained: exiting")
        self._done.set()

    async def _shutdown(self) -> None:
        self.draining = True
        await self.table.stop_all()
        self._done.set()

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _bind_control_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # the pool picked a fresh name; anything there is a stale leftover
    old = os.umask(0o177)  # 0600 from the start: no window where another user may connect
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lxdproxy-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--generation", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT)
    parser.add_argument("--udp-idle-timeout", type=float, default=UDP_IDLE_TIMEOUT)
    parser.add_argument("--relay", type=RelayMode, default=RelayMode.COPY,
                        choices=STREAM_MODES)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level, logging.INFO),
                        format=f"lxdproxy-worker[{os.getpid()}]: %(levelname)s %(name)s: "
                               "%(message)s")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no terminal to lose: never die of a hangup
    # This worker's own fd budget (the limit is per process): a reserve its control channel and
    # helpers keep, the rest for connections and sessions (forward/budget.py).
    limits = TrafficLimits(fds_per_connection=args.relay.fds_per_connection)
    budget = TrafficBudget(limits, raise_nofile_limit())
    table = DeviceTable(connect_timeout=args.connect_timeout,
                        udp_idle_timeout=args.udp_idle_timeout, budget=budget, relay=args.relay)
    uvloop.run(Worker(args.socket, args.generation, args.index, table).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
