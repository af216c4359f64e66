"""ReplyQueue: replies that meet a full send buffer wait (bounded, in order) for add_writer.

UDP over veth or loopback hardly ever reports EAGAIN (the skb leaves the sender's accounting at
once), so this drives the queue with unix datagram sockets on paths, which do block when the
reader falls behind: same code path, real sockets, no netns needed.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from lab.datagrams import run
from lxdproxy.forward.counters import DeviceCounters
from lxdproxy.forward.rate_limited_log import RateLimitedLog
from lxdproxy.forward.udp.reply_queue import SEND_QUEUE_MAX_DATAGRAMS, ReplyQueue


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_replies_wait_for_room_and_keep_their_order(tmp_path, loop_kind):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "client"))
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    client = str(tmp_path / "client")
    counters = DeviceCounters()
    queue = ReplyQueue(sender, RateLimitedLog(logging.getLogger("t.reply"), "t"), counters)
    total = 600

    async def main():
        loop = asyncio.get_running_loop()
        queued = 0
        for i in range(total):
            data = b"reply %d" % i
            if queue:
                queue.put(loop, data, client, None)
                queued += 1
                continue
            try:
                sender.sendto(data, client)
            except BlockingIOError:
                queue.put(loop, data, client, None)
                queued += 1
        assert queued > 0  # the receiver's queue really filled up
        receiver.setblocking(False)
        got = []
        deadline = loop.time() + 10
        while len(got) < total and loop.time() < deadline:
            try:
                got.append(receiver.recv(100))
            except BlockingIOError:
                await asyncio.sleep(0.001)  # let the writer callback refill
        assert got == [b"reply %d" % i for i in range(total)]
        assert not queue
        assert counters.datagrams_dropped == 0

    try:
        run(loop_kind, main())
    finally:
        sender.close()
        receiver.close()


def test_queue_is_bounded_and_clear_unregisters(tmp_path, caplog):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "client"))
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    counters = DeviceCounters()
    queue = ReplyQueue(sender, RateLimitedLog(logging.getLogger("t.reply2"), "t"), counters)

    async def main():
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.WARNING, logger="t.reply2"):
            for _ in range(SEND_QUEUE_MAX_DATAGRAMS + 10):
                queue.put(loop, b"x", str(tmp_path / "client"), None)
        assert "reply dropped" in caplog.text
        assert counters.datagrams_dropped == 10
        queue.clear()
        assert not queue
        assert not loop.remove_writer(sender.fileno())  # clear() already unregistered it

    try:
        run("asyncio", main())
    finally:
        sender.close()
        receiver.close()
