"""PROXY v2: encode -> parse round trips for every family/transport, TLVs, NETNS, CRC32C."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxdproxy.proxy_protocol.codec import (
    V2_SIGNATURE,
    Command,
    Family,
    ParseResult,
    ProxyHeaderError,
    ProxyHeaderParser,
    TlvType,
    Transport,
    encode_v2,
    netns_tlv,
    parse_header,
)
from lxdproxy.proxy_protocol.crc32c import crc32c

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
unix_paths = st.binary(min_size=1, max_size=108).filter(lambda b: b[0] != 0 and b"\0" not in b)
abstract = st.binary(min_size=1, max_size=107).filter(lambda b: not b.endswith(b"\0")).map(lambda b: b"\0" + b)
transports = st.sampled_from([Transport.STREAM, Transport.DGRAM])
commands = st.sampled_from([Command.PROXY, Command.LOCAL])
tlv_lists = st.lists(
    st.tuples(st.integers(0, 255).filter(lambda t: t != TlvType.CRC32C), st.binary(max_size=300)),
    max_size=5,
)


def feed_bytewise(data: bytes) -> ParseResult:
    parser = ProxyHeaderParser()
    for i in range(len(data)):
        result = parser.feed(data[i : i + 1])
        if result is not None:
            assert i == len(data) - 1, "completed before the last byte"
            return result
    raise AssertionError("never completed")


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    # RFC 3720 B.4 test vectors (iSCSI uses CRC32C too): 32 zero bytes, 32 0xFF bytes.
    assert crc32c(b"\0" * 32) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_tcp4_header_bytes_by_hand() -> None:
    header = encode_v2(Command.PROXY, Transport.STREAM, ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert header == (
        V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 168, 0, 1, 192, 168, 0, 11])
        + struct.pack("!HH", 56324, 443)
    )  # fmt: skip


def test_family_bytes_and_lengths() -> None:
    cases = [
        (Transport.STREAM, ("1.2.3.4", 1), ("5.6.7.8", 2), 0x11, 12),
        (Transport.DGRAM, ("1.2.3.4", 1), ("5.6.7.8", 2), 0x12, 12),
        (Transport.STREAM, ("::1", 1), ("::2", 2), 0x21, 36),
        (Transport.DGRAM, ("::1", 1), ("::2", 2), 0x22, 36),
        (Transport.STREAM, "/run/a.sock", b"\0abstract", 0x31, 216),
        (Transport.DGRAM, "/run/a.sock", "", 0x32, 216),
        (Transport.STREAM, None, None, 0x00, 0),
        (Transport.DGRAM, None, None, 0x00, 0),
    ]
    for transport, src, dst, fam_byte, length in cases:
        header = encode_v2(Command.PROXY, transport, src, dst)
        assert header[12] == 0x21 and header[13] == fam_byte
        assert int.from_bytes(header[14:16], "big") == length == len(header) - 16


def test_local_command_byte_and_parse() -> None:
    header = encode_v2(Command.LOCAL)
    assert header == V2_SIGNATURE + b"\x20\x00\x00\x00"
    result = parse_header(header + b"x")
    assert result.command is Command.LOCAL
    assert result.src is None and result.dst is None
    assert result.payload == b"x"
    # LOCAL with addresses: the receiver must ignore them, but TLVs still come through.
    result = parse_header(encode_v2(Command.LOCAL, Transport.STREAM, ("1.2.3.4", 1), ("5.6.7.8", 2),
                                    [netns_tlv("c1")]))  # fmt: skip
    assert result.family is Family.INET and result.src is None and result.netns == "c1"
    # LOCAL whose len is shorter than its family's block: just skip `len` bytes.
    short = V2_SIGNATURE + b"\x20\x11\x00\x04abcd"
    assert parse_header(short).header_length == 20


@given(commands, transports, ipv4, ports, ipv4, ports, tlv_lists)
def test_roundtrip_inet(command, transport, src, sport, dst, dport, tlvs) -> None:
    header = encode_v2(command, transport, (src, sport), (dst, dport), tlvs)
    for result in (parse_header(header + b"tail"), feed_bytewise(header)):
        assert (result.version, result.command, result.family) == (2, command, Family.INET)
        assert result.transport is transport
        if command is Command.PROXY:
            assert result.src == (src, sport) and result.dst == (dst, dport)
        assert list(result.tlvs) == tlvs
        assert result.header_length == len(header)
    assert parse_header(header + b"tail").payload == b"tail"


@given(commands, transports, ipv6, ports, ipv6, ports, tlv_lists)
def test_roundtrip_inet6(command, transport, src, sport, dst, dport, tlvs) -> None:
    header = encode_v2(command, transport, (src, sport, 0, 0), (dst, dport, 0, 0), tlvs)
    for result in (parse_header(header), feed_bytewise(header)):
        assert result.family is Family.INET6 and result.transport is transport
        if command is Command.PROXY:
            assert ipaddress.ip_address(result.src_address) == ipaddress.ip_address(src)
            assert ipaddress.ip_address(result.dst_address) == ipaddress.ip_address(dst)
            assert (result.src_port, result.dst_port) == (sport, dport)
        assert list(result.tlvs) == tlvs


@given(transports, st.one_of(unix_paths, abstract, st.just(b"")),
       st.one_of(unix_paths, abstract, st.just(b"")), tlv_lists)  # fmt: skip
def test_roundtrip_unix(transport, src, dst, tlvs) -> None:
    header = encode_v2(Command.PROXY, transport, src, dst, tlvs)
    assert len(header) == 16 + 216 + sum(3 + len(v) for _, v in tlvs)
    for result in (parse_header(header), feed_bytewise(header)):
        assert result.family is Family.UNIX and result.transport is transport
        assert result.src_port is None and result.dst_port is None
        for got, sent in ((result.src, src), (result.dst, dst)):
            if sent[:1] == b"\0":
                assert got == sent  # abstract: bytes with the NUL, like getpeername()
            else:
                assert got == sent.decode("utf-8", "surrogateescape")  # path as str, "" unnamed
        assert list(result.tlvs) == tlvs


@given(tlv_lists)
def test_roundtrip_unspec_carries_only_tlvs(tlvs) -> None:
    header = encode_v2(Command.PROXY, Transport.STREAM, None, None, tlvs)
    result = feed_bytewise(header)
    assert result.family is Family.UNSPEC and result.transport is Transport.UNSPEC
    assert result.src is None and list(result.tlvs) == tlvs


def test_unix_path_as_str_and_108_byte_path() -> None:
    result = parse_header(encode_v2(src="/run/lxd/a.sock", dst="/x"))
    assert (result.src, result.dst) == ("/run/lxd/a.sock", "/x")
    full = "/" + "p" * 107  # no room for a NUL terminator: still a valid sun_path
    assert parse_header(encode_v2(src=full, dst=full)).src == full
    with pytest.raises(ValueError, match="exceeds 108"):
        encode_v2(src=full + "p", dst="/x")
    with pytest.raises(ValueError, match="NUL"):
        encode_v2(src="/a\0b", dst="/x")


def test_dual_stack_addresses_pick_one_family() -> None:
    # Both v4 (or v4-mapped, as a dual-stack socket reports them): INET.
    r = parse_header(encode_v2(src=("::ffff:198.18.0.5", 9, 0, 0), dst=("198.18.0.1", 80)))
    assert r.family is Family.INET and r.src == ("198.18.0.5", 9) and r.dst == ("198.18.0.1", 80)
    # A v4 side with a real v6 side: INET6 with the v4 side mapped.
    r = parse_header(encode_v2(src=("198.18.0.5", 9), dst=("fd42::1", 80)))
    assert r.family is Family.INET6
    assert ipaddress.IPv6Address(r.src_address).ipv4_mapped == ipaddress.IPv4Address("198.18.0.5")
    # Zones cannot be carried.
    r = parse_header(encode_v2(src=("fe80::1%veth0", 9, 0, 3), dst=("fe80::2%veth0", 80, 0, 3)))
    assert r.src == ("fe80::1", 9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"src": ("1.2.3.4", 1), "dst": None}, "both addresses or neither"),
        ({"src": "/a", "dst": ("1.2.3.4", 1)}, "cannot mix"),
        ({"src": ("1.2.3.4", 1), "dst": ("1.2.3.4", 65536)}, "port"),
        ({"src": ("nope", 1), "dst": ("1.2.3.4", 1)}, "not an IP address"),
        ({"src": ("1.2.3.4", 1), "dst": ("1.2.3.4", 1), "transport": Transport.UNSPEC}, "STREAM or DGRAM"),
        ({"tlvs": [(TlvType.CRC32C, b"\0\0\0\0")]}, "checksum=True"),
        ({"tlvs": [(256, b"")]}, "not a byte"),
        ({"tlvs": [(TlvType.UNIQUE_ID, b"u" * 129)]}, "128"),
        ({"tlvs": [(0xE0, b"v" * 65533)]}, "exceeds 65535"),
    ],
)  # fmt: skip
def test_encode_v2_rejects_misuse(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        encode_v2(**kwargs)


def test_netns_tlv() -> None:
    header = encode_v2(src=("198.18.0.2", 40000), dst=("198.18.0.1", 80), tlvs=[netns_tlv("c1")])
    assert header.endswith(b"\x30\x00\x02c1")
    result = parse_header(header)
    assert result.netns == "c1"
    assert result.tlv(TlvType.NETNS) == b"c1" and result.tlv(TlvType.ALPN) is None
    assert result.tlvs == ((TlvType.NETNS, b"c1"),)
    assert isinstance(result.tlvs[0][0], TlvType)  # known types come back as the enum


@given(st.one_of(st.just(None), st.tuples(ipv4, ports)), tlv_lists)
def test_crc32c_roundtrip_and_value(addr, tlvs) -> None:
    src = dst = addr
    header = encode_v2(Command.PROXY, Transport.STREAM, src, dst, tlvs, checksum=True)
    # The CRC32C TLV is last: zero it and recompute over the whole header, as the spec says.
    assert header[-7:-4] == b"\x03\x00\x04"
    zeroed = header[:-4] + b"\0\0\0\0"
    assert int.from_bytes(header[-4:], "big") == crc32c(zeroed)
    result = feed_bytewise(header)
    assert list(result.tlvs[:-1]) == tlvs
    assert result.tlvs[-1][0] == TlvType.CRC32C


def test_crc32c_mismatch_is_rejected() -> None:
    header = bytearray(encode_v2(src=("1.2.3.4", 1), dst=("5.6.7.8", 2), checksum=True))
    header[20] ^= 0x01  # flip a bit of an address
    with pytest.raises(ProxyHeaderError, match="CRC32C mismatch"):
        parse_header(bytes(header))
    header = bytearray(encode_v2(checksum=True))
    header[-1] ^= 0x80  # flip a bit of the checksum itself
    with pytest.raises(ProxyHeaderError, match="CRC32C mismatch"):
        parse_header(bytes(header))


def test_crc32c_tlv_must_be_4_bytes_and_unique() -> None:
    bad = V2_SIGNATURE + b"\x21\x00\x00\x06" + b"\x03\x00\x03abc"
    with pytest.raises(ProxyHeaderError, match="must be 4"):
        parse_header(bad)
    two = V2_SIGNATURE + b"\x21\x00\x00\x0e" + b"\x03\x00\x04\0\0\0\0" * 2
    with pytest.raises(ProxyHeaderError, match="more than one CRC32C"):
        parse_header(two)


def test_header_bytes_are_fed_in_one_chunk_with_payload_or_split() -> None:
    header = encode_v2(transport=Transport.DGRAM, src=("1.2.3.4", 53), dst=("5.6.7.8", 53))
    data = header + b"datagram"
    for cut in range(len(data) + 1):
        parser = ProxyHeaderParser()
        first = parser.feed(data[:cut])
        result = first if first is not None else parser.feed(data[cut:])
        assert result is not None
        assert result.header_length == len(header)
        if first is not None:  # complete in the first chunk: payload is what came with it
            assert cut >= len(header) and result.payload == data[len(header) : cut]
        else:
            assert cut < len(header) and result.payload == b"datagram"


# Captured from HAProxy 2.6.12 (Debian 12) `server ... send-proxy-v2 proxy-v2-options
# crc32c,unique-id,authority`, followed by the client's b"hello". HAProxy puts CRC32C first.
HAPROXY_V2_TCP4 = bytes.fromhex(
    "0d0a0d0a000d0a515549540a211100167f0000017f0000018e802328030004471df9be05000068656c6c6f"
)
HAPROXY_V2_TCP6 = bytes.fromhex(
    "0d0a0d0a000d0a515549540a2121003400000000000000000000000000000001000000000000000000000000"
    "00000001a802233c030004e11bce2e05000661626331323368656c6c6f"
)


def test_haproxy_v2_captures() -> None:
    r = parse_header(HAPROXY_V2_TCP4)  # a wrong CRC32C (byte order, polynomial) would raise
    assert (r.src, r.dst, r.transport) == (("127.0.0.1", 36480), ("127.0.0.1", 9000), Transport.STREAM)
    assert r.tlvs == ((TlvType.CRC32C, bytes.fromhex("471df9be")), (TlvType.UNIQUE_ID, b""))
    assert (r.header_length, r.payload) == (38, b"hello")
    r = feed_bytewise(HAPROXY_V2_TCP6[:-5])
    assert (r.src, r.dst) == (("::1", 43010), ("::1", 9020))
    assert r.tlv(TlvType.UNIQUE_ID) == b"abc123"
    # Same addresses and TLVs from our encoder parse to the same result (CRC placed last).
    ours = encode_v2(src=("::1", 43010), dst=("::1", 9020), tlvs=[(TlvType.UNIQUE_ID, b"abc123")], checksum=True)
    assert parse_header(ours).tlv(TlvType.UNIQUE_ID) == b"abc123" and len(ours) == r.header_length
    tampered = bytearray(HAPROXY_V2_TCP6)
    tampered[63] ^= 0x20  # "abc123" -> "aBc123"
    with pytest.raises(ProxyHeaderError, match="CRC32C mismatch"):
        parse_header(bytes(tampered))
