"""The connection-rate floor for Python: the least a uvloop forwarder does per connection.

The same job as tcp_floor.c (listen here, enter CONNECT_NETNS, forward every connection to
CONNECT_IP:PORT there), as lean as Python on uvloop gets: fd callbacks, no task or future per
connection, sockets non-blocking from creation, 64 KiB reads, half-close propagated, no limits,
logging, PROXY header or counters. A benchmark reference only: it bounds what lxdproxy (which
does all of those) can reach per connection on this machine.

Usage: python -m benchmarks.floor.py_floor LISTEN_IP LISTEN_PORT CONNECT_NETNS CONNECT_IP PORT
"""

from __future__ import annotations

import errno
import socket
import sys

import uvloop

from lxdproxy.netns.setns import CLONE_NEWNET, setns

FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class Conn:
    __slots__ = ("loop", "c", "t", "eof", "done")

    def __init__(self, loop: uvloop.Loop, client: socket.socket, target: socket.socket) -> None:
        self.loop, self.c, self.t = loop, client, target
        self.eof = 0  # directions that saw EOF
        self.done = False

    def connected(self) -> None:
        self.loop.remove_writer(self.t.fileno())
        if self.t.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.close()
            return
        self.loop.add_reader(self.c.fileno(), self.pump, self.c, self.t)
        self.loop.add_reader(self.t.fileno(), self.pump, self.t, self.c)

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            data = src.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.loop.remove_reader(src.fileno())
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.eof += 1
            if self.eof == 2:
                self.close()
            return
        try:
            dst.send(data)  # 64 B request/response: never a partial write in this workload
        except OSError:
            self.close()

    def close(self) -> None:
        if not self.done:
            self.done = True
            for s in (self.c, self.t):
                self.loop.remove_reader(s.fileno())
                s.close()


def main() -> int:
    listen_ip, listen_port, netns, connect_ip, connect_port = sys.argv[1:6]
    listener = socket.socket(socket.AF_INET, FLAGS)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((listen_ip, int(listen_port)))
    listener.listen(4096)
    setns(netns, CLONE_NEWNET)  # one thread: every socket made from here on is the instance's
    target = (connect_ip, int(connect_port))
    loop = uvloop.new_event_loop()

    def on_accept() -> None:
        for _ in range(64):
            try:
                client, _addr = listener.accept()
            except BlockingIOError:
                return
            except OSError:
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = socket.socket(socket.AF_INET, FLAGS)
            t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = t.connect_ex(target)
            if err not in (0, errno.EINPROGRESS):
                client.close()
                t.close()
                continue
            conn = Conn(loop, client, t)
            loop.add_writer(t.fileno(), conn.connected)

    loop.add_reader(listener.fileno(), on_accept)
    print("listening", flush=True)
    loop.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
