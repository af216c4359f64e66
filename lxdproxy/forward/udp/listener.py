"""The data plane's datagram side: udp->udp sessions here, stream (tcp/unix) -> udp relays in
``datagram_stream`` (re-exported: ``from lxdproxy.forward.udp.listener import
relay_stream_to_datagram``).

Both run on the daemon's one event loop with ``loop.add_reader`` callbacks that drain their
socket without blocking and fall back to ``add_writer`` only when a send would block. This
works the same under asyncio and uvloop. udp->udp works in batches, both ways: ``recvmmsg``
reads up to RECV_SLOTS datagrams per call (``mmsg``; one 64 KiB slot each, so nothing is
truncated), a run of alike datagrams of one session leaves as one GSO send (``gso``,
``target_send``, ``reply_queue``), and UDP_GRO lets the kernel hand over a client's run as one
buffer. Under a flood the listen socket is read at most once per COALESCE_DELAY, so batches
are full: CPU per datagram, not wakeups, is what the 2-core machine runs out of.

Where we differ from LXD's forkproxy on purpose (spec §4.4, §9.10):
- sessions are keyed by (listen socket, client address): LXD keeps one process-global table
  keyed by the client's ``ip:port``, so a client talking to two listen ports of one device
  shares the first port's session and target;
- no truncation: a datagram of up to 64 KiB goes through whole (LXD truncates at 32 KiB);
- an ICMP error from the target (ECONNREFUSED on the session's connected socket) drops the
  session, so the client's next datagram builds a fresh one (LXD's reverse reader dies but the
  session lives on, and the client gets no replies until it has been idle for 30 minutes);
- the table is bounded (``max_sessions``, least recently active evicted first);
- a wildcard listener answers from the address the client sent to, and puts that address in
  the PROXY v2 header (``datagram_pktinfo``); LXD answers from whatever routing picks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from lxdproxy.forward.budget import DeviceBudget
from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.limits import UDP_IDLE_TIMEOUT
from lxdproxy.forward.rate_limited_log import RateLimitedLog
from lxdproxy.forward.udp.gso import (
    SOL_UDP,
    UDP_GRO,
    enable_gro,
    gro_segment,
    max_segment,
    split_gro,
)
from lxdproxy.forward.udp.mmsg import (
    CONTROLLEN_QWORD,
    LEN_WORD,
    NAME_SIZE,
    NAMELEN_WORD,
    QWORDS_PER_MSG,
    WORDS_PER_MSG,
    MmsgReceiver,
    iter_cmsgs,
    sockaddr_to_address,
)
from lxdproxy.forward.udp.pktinfo import (
    ANCBUF_SIZE,
    enable_pktinfo,
    is_pktinfo,
    is_wildcard,
    parse_pktinfo,
)
from lxdproxy.forward.udp.reply_queue import ReplyQueue
from lxdproxy.forward.udp.session import UdpClientSession
from lxdproxy.forward.udp.sessions import UdpSessionTable
from lxdproxy.forward.udp.stream_bridge import relay_stream_to_datagram
from lxdproxy.forward.udp.target_send import TargetSender

log = logging.getLogger(__name__)

# The largest UDP payload is 65507 bytes over IPv4 and 65527 over IPv6 (without jumbograms):
# a 64 KiB buffer never truncates one.
MAX_DATAGRAM = 65536
# Datagrams handled per wakeup, so one busy socket cannot starve the rest of the loop.
BATCH = 256
# The same for the listen socket, which pauses between wakeups under a flood: one wakeup must
# take what arrives in a pause at the highest rate (~2 ms of work at most).
LISTEN_BATCH = 1024
# Datagrams per recvmmsg call (each gets a MAX_DATAGRAM slot: 2 MiB of address space per
# listener that has seen traffic, resident only as far as datagrams filled it).
RECV_SLOTS = 32
# A wakeup that found this many datagrams waiting is a flood: reading pauses COALESCE_DELAY
# seconds (the event loops' timer resolution) so the next ones come in full batches.
COALESCE_FROM = 4
COALESCE_DELAY = 0.001
# Control messages of one datagram: pktinfo (IPv4 and IPv6 both, on a dual-stack socket) and
# the GRO segment size.
CONTROL_SIZE = ANCBUF_SIZE + socket.CMSG_SPACE(4) + 24
# While a new session's target socket is being opened, its client's datagrams wait here.
PENDING_MAX_DATAGRAMS = 64
PENDING_MAX_BYTES = 256 * 1024
# Receive buffer asked for on the listen socket (capped by net.core.rmem_max): a burst from
# many clients waits in the kernel while the loop serves others, rather than being dropped.
LISTEN_RCVBUF = 4 * 1024 * 1024
# The opening of a target socket that stop() waits for before giving up on it.
STOP_OPEN_GRACE = 5.0
# Timers may fire this much early (asyncio rounds to its clock resolution).
_TIMER_SLACK = 1e-3

HeaderFactory = Callable[[tuple, tuple], bytes]
OpenTarget = Callable[[int], Awaitable[socket.socket]]


class UdpListenerRelay:
    """udp->udp for one listen socket: one session (and one target socket) per client.

    ``open_target(connect_port)`` returns a connected UDP socket in the target namespace.
    ``header_factory(client_addr, local_addr)``, when given, returns the bytes (a PROXY v2
    DGRAM header) prepended to every datagram sent to the target for that client.
    ``counters`` (the device's) counts datagrams and payload bytes each way, drops and failed
    target opens.
    The caller owns ``listen_sock``: ``stop()`` leaves it open.
    """

    def __init__(
        self,
        listen_sock: socket.socket,
        connect_port: int,
        open_target: OpenTarget,
        *,
        header_factory: HeaderFactory | None = None,
        idle_timeout: float = UDP_IDLE_TIMEOUT,
        max_sessions: int = 4096,
        counters: DeviceCounters | None = None,
        budget: DeviceBudget | None = None,
    ) -> None:
        self._counters = counters if counters is not None else DeviceCounters()
        self._sock = listen_sock
        self._budget = budget  # the device's fd budget: one fd per session
        self._fd = listen_sock.fileno()
        self._local = listen_sock.getsockname()
        # Bound to 0.0.0.0 or ::: learn each datagram's destination, to answer from it.
        self._wildcard = (listen_sock.family in (socket.AF_INET, socket.AF_INET6)
                          and is_wildcard(self._local[0]))
        self._connect_port = connect_port
        self._open_target = open_target
        self._header_factory = header_factory
        # Keyed by (this listen socket, client address): one table per listen socket, so the
        # same client on two listen ports gets two sessions (LXD bug, spec §4.4).
        # Least recently active first: the front is both the next to expire and the one to
        # evict when the table is full.
        self._table: UdpSessionTable[UdpClientSession] = UdpSessionTable(
            self._clock, idle_timeout=idle_timeout, max_sessions=max_sessions)
        # The hot path looks clients up here (one dict lookup) and touches the table only
        # once per session per wakeup; the table stays the authority on expiry and eviction.
        # Keyed by the client's raw sockaddr, as recvmmsg reports it (no tuple to build).
        self._by_name: dict[bytes, UdpClientSession] = {}
        self._rx: MmsgReceiver | None = None
        self._resume: asyncio.TimerHandle | None = None  # reading paused to gather a batch
        self._wakeup = 0
        self._now = 0.0  # loop time, read once per wakeup
        self._log = RateLimitedLog(log, f"udp relay {self._local!r}")
        self._replies = ReplyQueue(listen_sock, self._log, self._counters)
        self._sender = TargetSender(self._log, self._counters, self._drop, self._deliver)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._opening: set[asyncio.Task[None]] = set()
        self._running = False

    # -- public ------------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        return len(self._table)

    def start(self) -> None:
        """Start serving on the running loop."""
        if self._running:
            return
        self._loop = self._sender.loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._running = True
        if self._wildcard:
            enable_pktinfo(self._sock)
        # Where the kernel can, a client's run of datagrams arrives as one buffer (and often
        # leaves as one GSO send).
        enable_gro(self._sock)
        if self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < LISTEN_RCVBUF:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTEN_RCVBUF)
        self._loop.add_reader(self._fd, self._on_listen_readable)
        if self._budget is not None:
            self._budget.register(self)

    def oldest_activity(self) -> float | None:
        """When the least recently active session expires (the budget evicts by this)."""
        return self._table.next_expiry()

    def evict_oldest(self) -> bool:
        oldest = self._table.oldest()
        if oldest is None:
            return False
        self._drop(oldest.value)
        return True

    async def stop(self) -> None:
        """Stop reading and close every session socket (not the listen socket)."""
        was_running, self._running = self._running, False
        if self._budget is not None:
            self._budget.unregister(self)
        loop = self._loop
        if loop is not None and was_running:
            loop.remove_reader(self._fd)
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._replies.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for entry in self._table.clear():
            self._close(entry.value)
        # A target being opened (maybe in a namespace thread) cannot be interrupted without
        # leaking its socket: give it a moment to arrive, so _open() closes it.
        if self._opening:
            _done, slow = await asyncio.wait(set(self._opening), timeout=STOP_OPEN_GRACE)
            for task in slow:
                task.cancel()

    def _clock(self) -> float:
        return self._now

    # -- client -> target --------------------------------------------------------------

    def _on_listen_readable(self) -> None:
        got = self._read_batches()
        if got >= COALESCE_FROM and self._running:
            # A flood that this wakeup drained: let the next datagrams gather in the socket
            # for a moment, so they come in full batches (one wakeup, recvmmsg and GSO send
            # per many) rather than a wakeup each. A lone datagram (a query) never waits.
            self._loop.remove_reader(self._fd)  # type: ignore[union-attr]
            self._resume = self._loop.call_later(  # type: ignore[union-attr]
                COALESCE_DELAY, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        if self._running:
            self._loop.add_reader(self._fd, self._on_listen_readable)  # type: ignore[union-attr]

    def _read_batches(self) -> int:
        """Read and forward up to LISTEN_BATCH datagrams; returns how many were read."""
        # The hot path: one recvmmsg per RECV_SLOTS datagrams, then one send per session (a
        # GSO run where the datagrams allow); keep it free of method calls where possible.
        rx = self._receiver()
        recv = rx.recv
        words, qwords, data, names = rx.words, rx.qwords, rx.data, rx.names
        by_name = self._by_name
        touch = self._table.touch
        counters = self._counters
        wildcard = self._wildcard
        fd = self._fd
        self._now = self._loop.time()  # type: ignore[union-attr]
        self._wakeup = wakeup = self._wakeup + 1
        got = 0
        for _ in range(LISTEN_BATCH // RECV_SLOTS):
            try:
                n = recv(fd)
            except OSError as e:
                # An unconnected socket only sees ICMP errors with IP_RECVERR; anything else
                # is consumed by this read, so keep going.
                self._log.warning("receive failed: %s", e)
                continue
            if not n:
                return got
            got += n
            ready: list[UdpClientSession] = []
            for i in range(n):
                w = i * WORDS_PER_MSG
                length = words[w + LEN_WORD]
                at = i * MAX_DATAGRAM
                name = names[i * NAME_SIZE:i * NAME_SIZE + words[w + NAMELEN_WORD]].tobytes()
                pktinfo, segment = None, 0
                controllen = qwords[i * QWORDS_PER_MSG + CONTROLLEN_QWORD]
                if controllen:
                    ctl = i * CONTROL_SIZE
                    pktinfo, segment = self._control_of(rx.control[ctl:ctl + controllen])
                if segment:  # GRO: a run of datagrams of one client in one buffer
                    dgrams = [data[at + o:at + o + m] for o, m in split_gro(length, segment)]
                else:
                    dgrams = [data[at:at + length]]
                counters.datagrams_in += len(dgrams)
                counters.bytes_in += length
                s = by_name.get(name)
                if s is not None:
                    if s.wakeup != wakeup:
                        s.wakeup = wakeup
                        touch(s.entry)  # type: ignore[arg-type]
                    if wildcard and pktinfo != s.pktinfo:  # it talks to another local address
                        self._set_pktinfo(s, pktinfo)
                    if s.sock is not None and not s.out:
                        if not s.batch:
                            ready.append(s)
                        s.batch += dgrams
                        continue
                # The slow path may open, evict or drop sessions: send what waits first.
                if ready:
                    self._sender.flush(ready)
                    ready = []
                for d in dgrams:
                    self._deliver(name, bytes(d), pktinfo)
            if ready:
                self._sender.flush(ready)
            if n < RECV_SLOTS:
                return got
        return got

    def _receiver(self) -> MmsgReceiver:
        """The receive buffers, shared by the listen socket and every session's target socket
        (each callback is done with them when it returns)."""
        if self._rx is None:  # first traffic: the buffers of an idle listener are never mapped
            self._rx = MmsgReceiver(RECV_SLOTS, MAX_DATAGRAM, CONTROL_SIZE)
        return self._rx

    def _control_of(self, control: memoryview) -> tuple[bytes | None, int]:
        """(pktinfo, GRO segment size or 0) from one datagram's control messages."""
        pktinfo, segment = None, 0
        try:
            for level, kind, value in iter_cmsgs(control):
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = gro_segment(value)
                elif pktinfo is None and is_pktinfo(level, kind):
                    pktinfo = value
        except ValueError as e:
            self._log.warning("%s", e)
        return pktinfo, segment

    def _set_pktinfo(self, s: UdpClientSession, pktinfo: bytes | None) -> tuple:
        """Remember where the client's datagrams arrive; returns that local address."""
        s.pktinfo = pktinfo
        if pktinfo is None:
            s.reply_cmsg = None
            return self._local
        try:
            local_ip, s.reply_cmsg = parse_pktinfo(pktinfo)
        except ValueError as e:
            self._log.warning("%s", e)
            s.reply_cmsg = None
            return self._local
        return (local_ip, self._local[1])

    def _new_session(self, name: bytes, first: bytes, pktinfo: bytes | None = None) -> None:
        if not self._running:
            return
        try:
            client = sockaddr_to_address(name)
        except ValueError as e:
            self._log.warning("datagram dropped: %s", e)
            self._counters.datagrams_dropped += 1
            return
        s = UdpClientSession(name, client, None)
        local = self._set_pktinfo(s, pktinfo) if pktinfo is not None else self._local
        if self._header_factory is not None:
            try:
                s.header = self._header_factory(client, local)
            except Exception as e:  # the factory is the runtime's code: never kill the loop
                self._log.warning("no PROXY header for %r, datagram dropped: %s", client, e)
                self._counters.datagrams_dropped += 1
                return
        if self._budget is not None and not self._budget.admit_session():
            return  # counted and logged by the budget
        lookup = self._table.add(self._fd, name, s)
        s.entry = lookup.session
        self._by_name[name] = s
        for evicted in lookup.evicted:  # the table was full: least recently active goes
            self._close(evicted.value)
        self._queue_pending(s, first)
        task = self._loop.create_task(self._open(s))  # type: ignore[union-attr]
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)
        self._arm_timer()

    def _queue_pending(self, s: UdpClientSession, data: bytes) -> None:
        pending = s.pending
        if pending is None:
            return
        if (len(pending) >= PENDING_MAX_DATAGRAMS
                or s.pending_bytes + len(data) > PENDING_MAX_BYTES):
            self._log.warning("target for %r not open yet: datagram dropped", s.client)
            self._counters.datagrams_dropped += 1
            return
        pending.append(data)
        s.pending_bytes += len(data)

    async def _open(self, s: UdpClientSession) -> None:
        try:
            sock = await self._open_target(self._connect_port)
        except Exception as e:
            self._counters.connect_failures += 1
            self._log.warning("cannot open target port %d for %r: %s",
                              self._connect_port, s.client, e)
            self._drop(s)  # the client's next datagram tries again
            return
        if s.closed or not self._running:
            sock.close()
            return
        self._now = self._loop.time()  # type: ignore[union-attr]
        sock.setblocking(False)
        s.sock = sock
        s.fd = sock.fileno()
        s.gso_max = max_segment(sock)
        self._loop.add_reader(s.fd, self._on_target_readable, s)  # type: ignore[union-attr]
        pending, s.pending = s.pending or [], None
        for data in pending:
            if s.closed:  # refused mid-flush: the rest goes to the replacement session
                self._deliver(s.name, data, s.pktinfo)
            else:
                self._sender.send_slow(s, data)

    def _deliver(self, name: bytes, data: bytes, pktinfo: bytes | None) -> None:
        s = self._by_name.get(name)
        if s is None:
            self._new_session(name, data, pktinfo)
        elif s.sock is None:
            self._queue_pending(s, data)
        else:
            self._sender.send_slow(s, data)

    # -- target -> client --------------------------------------------------------------

    def _on_target_readable(self, s: UdpClientSession) -> None:
        rx = self._receiver()
        words, data = rx.words, rx.data
        counters = self._counters
        got = 0
        for _ in range(BATCH // RECV_SLOTS):
            try:
                n = rx.recv(s.fd)
            except OSError as e:
                # ECONNREFUSED: ICMP unreachable from the target. Drop the session so the
                # client's next datagram re-creates it (LXD bug §9.10).
                self._log.info("target for %r failed, session dropped: %s", s.client, e)
                self._drop(s)
                return
            if not n:
                break
            batch = [data[i * MAX_DATAGRAM:i * MAX_DATAGRAM + words[i * WORDS_PER_MSG + LEN_WORD]]
                     for i in range(n)]
            counters.datagrams_out += n
            counters.bytes_out += sum(len(d) for d in batch)
            self._replies.send_batch(self._loop, s, batch)  # type: ignore[arg-type]
            got += n
            if n < RECV_SLOTS:
                break
        if got:
            self._now = self._loop.time()  # type: ignore[union-attr]
            self._table.touch(s.entry)  # type: ignore[arg-type]  # replies reset the timer too

    # -- bookkeeping -------------------------------------------------------------------

    def _drop(self, s: UdpClientSession) -> None:
        """Remove a session from the table and close it."""
        if s.entry is not None:
            self._table.remove(s.entry)
        self._close(s)

    def _close(self, s: UdpClientSession) -> None:
        if s.closed:
            return
        s.closed = True
        if self._budget is not None:
            self._budget.release_session()
        s.pending = None
        if self._by_name.get(s.name) is s:
            del self._by_name[s.name]
        if s.sock is not None:
            self._loop.remove_reader(s.fd)  # type: ignore[union-attr]
            if s.out:
                self._loop.remove_writer(s.fd)  # type: ignore[union-attr]
                s.out.clear()
            s.sock.close()
        # A session still opening is closed by _open() when its socket arrives.

    def _arm_timer(self) -> None:
        """Sleep until the oldest session could expire (not one timer per datagram)."""
        at = self._table.next_expiry()
        if at is None or not self._running:
            return
        if self._timer is not None:
            if self._timer_at <= at:
                return  # fires early enough; _expire re-arms
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._expire)  # type: ignore[union-attr]

    def _expire(self) -> None:
        self._timer = None
        # Timers may fire a hair early: count a session that far from its deadline as expired.
        self._now = self._loop.time() + _TIMER_SLACK  # type: ignore[union-attr]
        for entry in self._table.expire():
            self._close(entry.value)
        self._now -= _TIMER_SLACK
        self._arm_timer()


__all__ = ["UdpListenerRelay", "relay_stream_to_datagram"]
