"""client -> target: the sends of one listen socket's sessions to their targets.

The hot path hands over each session's datagrams of one batch (views into the receive
buffers): alike ones leave as one GSO send (``UDP_SEGMENT``), in order, the PROXY header (if
any) in front of each; others one send each. A send that would block queues the datagram
(a copy) behind which the session's next ones wait until ``add_writer`` reports room.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.rate_limited_log import RateLimitedLog
from lxdproxy.forward.udp.gso import GSO_REFUSED, gso_runs, segment_cmsg
from lxdproxy.forward.udp.reply_queue import SEND_QUEUE_MAX_DATAGRAMS
from lxdproxy.forward.udp.session import UdpClientSession


class TargetSender:
    """Sends to the targets of one relay's sessions. ``drop(session)`` ends a session whose
    target refused; ``deliver(name, data, pktinfo)`` hands a datagram to the client's current
    session (a new one if it has none). ``loop`` is set when the relay starts."""

    def __init__(self, log: RateLimitedLog, counters: DeviceCounters,
                 drop: Callable[[UdpClientSession], None],
                 deliver: Callable[[bytes, bytes, bytes | None], None]) -> None:
        self._log = log
        self._counters = counters
        self._drop = drop
        self._deliver = deliver
        self.loop: asyncio.AbstractEventLoop | None = None

    def flush(self, ready: list[UdpClientSession]) -> None:
        """Send each session's datagrams of this batch, in order: GSO runs where they are alike,
        one send each otherwise."""
        for s in ready:
            batch, s.batch = s.batch, []
            if s.closed:  # evicted or refused meanwhile: they belong to the client's next one
                for d in batch:
                    self._deliver(s.name, bytes(d), s.pktinfo)
                continue
            header = s.header
            if len(batch) == 1 or not s.gso_max:
                for k, d in enumerate(batch):
                    if s.closed or s.out:
                        self._after_failure(s, batch[k:])
                        break
                    self._send_to_target(s, d)
                continue
            h = len(header) if header is not None else 0
            lengths = [h + len(d) for d in batch]
            send = s.sock.sendmsg  # type: ignore[union-attr]
            for start, count in gso_runs(lengths, s.gso_max):
                if s.closed or s.out:
                    self._after_failure(s, batch[start:])
                    break
                if count == 1:
                    self._send_to_target(s, batch[start])
                    continue
                run = batch[start:start + count]
                try:
                    if header is None:
                        send(run, segment_cmsg(lengths[start]))
                    else:
                        send([b for d in run for b in (header, d)], segment_cmsg(lengths[start]))
                except OSError as e:
                    if e.errno in GSO_REFUSED:  # this path cannot take GSO: one send each
                        s.gso_max = 0
                        for d in run:
                            self.send_slow(s, d)
                    else:
                        self._send_failed(s, run[0], e)
                        self._after_failure(s, run[1:])

    def _after_failure(self, s: UdpClientSession, rest: list[memoryview]) -> None:
        """The datagrams behind one whose send failed: behind it in the queue, or to the
        client's next session."""
        for d in rest:
            if s.closed:
                self._deliver(s.name, bytes(d), s.pktinfo)
            else:
                self.send_slow(s, d)

    def send_slow(self, s: UdpClientSession, data: memoryview | bytes) -> None:
        """Send (or retry) one datagram to the target: with a header, behind a backlog, or
        after the fast path's send failed."""
        if s.out:
            self._queue_out(s, data)
        else:
            self._send_to_target(s, data)

    def _send_to_target(self, s: UdpClientSession, data: memoryview | bytes) -> None:
        try:
            if s.header is None:
                s.sock.send(data)  # type: ignore[union-attr]
            else:
                s.sock.sendmsg((s.header, data))  # type: ignore[union-attr]
        except OSError as e:
            self._send_failed(s, data, e)

    def _send_failed(self, s: UdpClientSession, data: memoryview | bytes, err: OSError) -> None:
        if isinstance(err, (BlockingIOError, InterruptedError)):
            self._queue_out(s, data)
            self.loop.add_writer(s.fd, self._on_target_writable, s)  # type: ignore[union-attr]
        elif isinstance(err, ConnectionRefusedError):
            # The target answered an earlier datagram with ICMP unreachable. Start over with
            # a fresh session carrying this datagram (LXD bug §9.10 left the client stranded).
            self._drop(s)
            self._deliver(s.name, bytes(data), s.pktinfo)
        else:
            self._log.warning("send to target for %r failed, datagram dropped: %s",
                              s.client, err)
            self._counters.datagrams_dropped += 1

    def _queue_out(self, s: UdpClientSession, data: memoryview | bytes) -> None:
        if len(s.out) >= SEND_QUEUE_MAX_DATAGRAMS:
            self._log.warning("target for %r is not draining: datagram dropped", s.client)
            self._counters.datagrams_dropped += 1
            return
        s.out.append(bytes(data) if s.header is None else s.header + bytes(data))

    def _on_target_writable(self, s: UdpClientSession) -> None:
        out = s.out
        while out:
            try:
                s.sock.send(out[0])  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                # Reported for an earlier datagram; the reader drops the session.
                self._counters.datagrams_dropped += 1
            except OSError as e:
                self._log.warning("send to target for %r failed: %s", s.client, e)
                self._counters.datagrams_dropped += 1
            out.popleft()
        self.loop.remove_writer(s.fd)  # type: ignore[union-attr]
