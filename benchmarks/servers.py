"""Backend servers that run inside the lab instance: ``python -m benchmarks.servers echo PORT``.

A TCP echo server fast enough not to be the bottleneck for the connection-rate workload: asyncio
(uvloop when installed) with several SO_REUSEPORT worker processes, so the kernel spreads accepts.
Prints ``READY`` once every worker listens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        return False  # close once the client half-closes


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(4096)
    return sock


def _serve(port: int, ready_w: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sock = _listener(port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(_Echo, sock=sock, backlog=4096)
        os.write(ready_w, b"r")
        await asyncio.Event().wait()

    asyncio.run(main())


def _die_with_parent() -> None:
    # The lab SIGKILLs what it started; without this the workers would outlive the instance's server.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.servers")
    p.add_argument("kind", choices=["echo"])
    p.add_argument("port", type=int)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    ready_r, ready_w = os.pipe()
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _die_with_parent()
            try:
                _serve(args.port, ready_w)
            finally:
                os._exit(1)
        children.append(pid)
    got = b""
    while len(got) < args.workers:
        chunk = os.read(ready_r, args.workers)
        if not chunk:
            return 1
        got += chunk
    print("READY", flush=True)

    def stop(*_: object) -> None:
        for c in children:
            try:
                os.kill(c, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    os.wait()  # a worker died: take the rest down with us
    stop()
    return 1


if __name__ == "__main__":
    sys.exit(main())
