"""The pure parts of recvmmsg batching and GSO: mmsghdr arrays, control messages, socket
addresses, GSO runs and GRO splits, from bytes."""

from __future__ import annotations

import socket
import struct

import pytest

from lxdproxy.forward.udp.gso import (
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    gro_segment,
    gso_runs,
    segment_cmsg,
    split_gro,
)
from lxdproxy.forward.udp.mmsg import (
    CONTROLLEN_QWORD,
    IOVEC_SIZE,
    LEN_WORD,
    MMSGHDR_SIZE,
    NAME_SIZE,
    NAMELEN_WORD,
    QWORDS_PER_MSG,
    WORDS_PER_MSG,
    RecvResult,
    iter_cmsgs,
    pack_iovecs,
    pack_recv_headers,
    sockaddr_to_address,
    unpack_results,
)

# struct mmsghdr on x86-64/aarch64 Linux: msghdr (56 bytes) then msg_len, padded to 64.
_MMSGHDR = struct.Struct("=QI4xQQQQi4xI4x")


def test_recv_headers_point_each_message_at_its_slots():
    raw = pack_recv_headers(3, names=0x1000, iovecs=0x2000, control=0x3000, control_size=128)
    assert MMSGHDR_SIZE == _MMSGHDR.size == 64
    assert len(raw) == 3 * 64
    for i in range(3):
        name, namelen, iov, iovlen, ctl, ctllen, flags, length = _MMSGHDR.unpack_from(raw, i * 64)
        assert (name, namelen) == (0x1000 + i * NAME_SIZE, NAME_SIZE)
        assert (iov, iovlen) == (0x2000 + i * IOVEC_SIZE, 1)
        assert (ctl, ctllen) == (0x3000 + i * 128, 128)
        assert (flags, length) == (0, 0)


def test_recv_headers_without_control():
    raw = pack_recv_headers(1, names=8, iovecs=16, control=0x3000, control_size=0)
    assert _MMSGHDR.unpack_from(raw)[4:6] == (0, 0)


def test_iovecs_are_back_to_back_slots():
    raw = pack_iovecs(0x10000, 65536, 2)
    assert struct.unpack("=QQQQ", raw) == (0x10000, 65536, 0x20000, 65536)


def test_results_read_what_the_kernel_wrote():
    raw = (_MMSGHDR.pack(1, 16, 2, 1, 3, 24, 0, 65507)
           + _MMSGHDR.pack(1, 28, 2, 1, 3, 0, 0x20, 0))
    assert unpack_results(raw, 2) == [RecvResult(65507, 16, 24, 0), RecvResult(0, 28, 0, 0x20)]
    # The hot path's word indexes say the same.
    words, qwords = memoryview(raw).cast("I"), memoryview(raw).cast("Q")
    assert [words[i * WORDS_PER_MSG + LEN_WORD] for i in range(2)] == [65507, 0]
    assert [words[i * WORDS_PER_MSG + NAMELEN_WORD] for i in range(2)] == [16, 28]
    assert [qwords[i * QWORDS_PER_MSG + CONTROLLEN_QWORD] for i in range(2)] == [24, 0]


def _cmsg(level: int, kind: int, data: bytes) -> bytes:
    raw = struct.pack("=Qii", 16 + len(data), level, kind) + data
    return raw.ljust((len(raw) + 7) & ~7, b"\0")


def test_control_messages_walk_aligned():
    pktinfo = bytes(range(12))
    raw = _cmsg(socket.IPPROTO_IP, 8, pktinfo) + _cmsg(SOL_UDP, UDP_GRO, struct.pack("=i", 1400))
    assert list(iter_cmsgs(raw)) == [(socket.IPPROTO_IP, 8, pktinfo),
                                     (SOL_UDP, UDP_GRO, struct.pack("=i", 1400))]
    assert gro_segment(list(iter_cmsgs(raw))[1][2]) == 1400
    assert list(iter_cmsgs(b"")) == []


@pytest.mark.parametrize("raw", [struct.pack("=Qii", 8, 0, 0), struct.pack("=Qii", 200, 0, 0)])
def test_malformed_control_message_is_a_clear_error(raw):
    with pytest.raises(ValueError, match="malformed control message"):
        list(iter_cmsgs(raw))


def test_sockaddr_in_and_in6():
    v4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", 5353, bytes([198, 18, 0, 1]))
    assert sockaddr_to_address(v4 + b"\0" * 8) == ("198.18.0.1", 5353)
    addr6 = socket.inet_pton(socket.AF_INET6, "fd42::7")
    v6 = (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI16s", 443, 0x12345, addr6)
          + struct.pack("=I", 3))
    assert sockaddr_to_address(v6) == ("fd42::7", 443, 0x12345, 3)
    with pytest.raises(ValueError, match="family 1"):
        sockaddr_to_address(struct.pack("=H", socket.AF_UNIX) + b"\0" * 14)
    with pytest.raises(ValueError, match="not an IPv4 or IPv6"):
        sockaddr_to_address(v6[:20])


def test_gso_runs_group_same_size_datagrams_in_order():
    assert gso_runs([64] * 70, 1472) == [(0, 64), (64, 6)]  # at most 64 segments
    # a shorter one ends a run; a longer one starts the next
    assert gso_runs([100, 100, 40, 100, 200, 200], 1472) == [(0, 3), (3, 1), (4, 2)]
    assert gso_runs([2000, 2000, 10], 1472) == [(0, 1), (1, 1), (2, 1)]  # above the MTU
    runs = gso_runs([1000] * 70, 65507)
    assert runs == [(0, 64), (64, 6)]
    assert gso_runs([30000, 30000, 30000], 65507) == [(0, 2), (2, 1)]  # 64 KiB in all
    assert gso_runs([0, 0], 1472) == [(0, 1), (1, 1)]
    assert gso_runs([], 1472) == []


def test_gso_runs_cover_everything_once():
    lengths = [64, 64, 64, 1, 500, 500, 65507, 3, 3, 3, 2, 2]
    runs = gso_runs(lengths, 1472)
    covered = [i for start, count in runs for i in range(start, start + count)]
    assert covered == list(range(len(lengths)))
    for start, count in runs:
        run = lengths[start:start + count]
        assert all(n == run[0] for n in run[:-1]) and run[-1] <= run[0]


def test_split_gro_and_segment_cmsg():
    assert split_gro(1037, 100) == [(i * 100, 100) for i in range(10)] + [(1000, 37)]
    assert split_gro(300, 100) == [(0, 100), (100, 100), (200, 100)]
    assert split_gro(64, 0) == [(0, 64)]
    assert segment_cmsg(1400) == [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 1400))]
