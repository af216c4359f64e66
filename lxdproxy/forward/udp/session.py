"""The socket state of one client of a udp->udp relay (see ``datagram.UdpListenerRelay``)."""

from __future__ import annotations

import socket
from collections import deque

from lxdproxy.forward.udp.gso import MAX_RUN_BYTES
from lxdproxy.forward.udp.pktinfo import Cmsg
from lxdproxy.forward.udp.sessions import UdpSession


class UdpClientSession:
    """Socket state of one client of one listen socket: its own connected target socket."""

    __slots__ = ("name", "client", "header", "batch", "gso_max", "reply_gso_max", "entry", "sock", "fd", "pending",
                 "pending_bytes", "out", "closed", "wakeup", "pktinfo", "reply_cmsg")

    def __init__(self, name: bytes, client: tuple, header: bytes | None) -> None:
        self.name = name  # the client's raw sockaddr: the key the hot path looks it up by
        self.client = client
        self.header = header
        self.batch: list[memoryview] = []  # this wakeup's datagrams, sent once it is read
        self.gso_max = 0  # the largest GSO segment its target path takes (0: no GSO)
        # ... and the client's path, learnt from refusals (an unconnected socket has no MTU).
        self.reply_gso_max = MAX_RUN_BYTES
        # Wildcard listeners: the pktinfo of the client's last datagram, and the control
        # message that makes replies leave from the address it reached (None: plain sendto).
        self.pktinfo: bytes | None = None
        self.reply_cmsg: list[Cmsg] | None = None
        self.entry: UdpSession[UdpClientSession] | None = None  # its row in the session table
        self.sock: socket.socket | None = None  # None while it is being opened
        self.fd = -1
        self.pending: list[bytes] | None = []  # datagrams received while opening
        self.pending_bytes = 0
        self.out: deque[bytes] = deque()  # datagrams waiting for the target socket to drain
        self.closed = False
        self.wakeup = -1  # the last listen-socket wakeup that touched it in the table
