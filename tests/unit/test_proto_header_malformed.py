"""Hostile input: v2 strictness, and fuzzing that only ever yields ProxyHeaderError or "need more"."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxdproxy.proxy_protocol.codec import (
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyHeaderParser,
    encode_v2,
    netns_tlv,
    parse_header,
)

TCP4_BLOCK = bytes(12)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + TCP4_BLOCK, "unsupported PROXY v2 version 1"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + TCP4_BLOCK, "unsupported PROXY v2 version 3"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + TCP4_BLOCK, "invalid PROXY v2 command 0x2"),
        (V2_SIGNATURE + b"\x2f\x11\x00\x0c" + TCP4_BLOCK, "invalid PROXY v2 command 0xf"),
        (V2_SIGNATURE + b"\x21\x13\x00\x0c" + TCP4_BLOCK, "family/protocol byte 0x13"),
        (V2_SIGNATURE + b"\x21\x41\x00\x0c" + TCP4_BLOCK, "family/protocol byte 0x41"),
        (V2_SIGNATURE + b"\x21\x01\x00\x00", "family/protocol byte 0x01"),
        (V2_SIGNATURE + b"\x21\x10\x00\x0c" + TCP4_BLOCK, "family/protocol byte 0x10"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0b" + TCP4_BLOCK[:11], "too short for INET: 11 bytes, need 12"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + TCP4_BLOCK, "too short for INET6"),
        (V2_SIGNATURE + b"\x21\x31\x00\x24" + bytes(36), "too short for UNIX"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0e" + TCP4_BLOCK + b"\x30\x00", "truncated PROXY v2 TLV"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0f" + TCP4_BLOCK + b"\x30\x00\x01", "overruns the header"),
        (V2_SIGNATURE + b"\x21\x00\x00\x04" + b"\x30\x00\x05x", "overruns the header"),
        (V2_SIGNATURE + b"\x21\x11\x00", "connection ended after 15 bytes"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0c" + TCP4_BLOCK[:5], "connection ended after 21 bytes"),
        (V2_SIGNATURE[:11] + b"\x0b", "missing PROXY protocol header"),
    ],
)  # fmt: skip
def test_parse_v2_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message):
        parse_header(data)


def test_v2_errors_are_raised_as_soon_as_the_byte_arrives() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(V2_SIGNATURE) is None
    with pytest.raises(ProxyHeaderError, match="version 1"):
        parser.feed(b"\x11")
    parser = ProxyHeaderParser()
    assert parser.feed(V2_SIGNATURE + b"\x21") is None
    with pytest.raises(ProxyHeaderError, match="0x55"):
        parser.feed(b"\x55")


def test_v2_length_bound() -> None:
    parser = ProxyHeaderParser(max_v2_length=536)
    with pytest.raises(ProxyHeaderError, match="537 bytes exceeds the 536-byte limit"):
        parser.feed(V2_SIGNATURE + b"\x21\x00" + (521).to_bytes(2, "big"))
    # The protocol maximum is accepted by default.
    tlv = (0xE0, b"v" * (0xFFFF - 3))
    header = encode_v2(tlvs=[tlv])
    assert len(header) == 16 + 0xFFFF
    assert parse_header(header).tlvs == (tlv,)
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_v2_length=15)
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_v2_length=16 + 0x10000)


def test_errors_are_sticky() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError) as first:
        parser.feed(b"SSH-2.0-OpenSSH\r\n")
    with pytest.raises(ProxyHeaderError) as again:
        parser.feed(b"PROXY UNKNOWN\r\n")
    assert again.value is first.value
    with pytest.raises(ProxyHeaderError):
        parser.feed_eof()


def _feed_all(data: bytes, chunks: list[int]) -> None:
    """Feed data in the given chunk sizes; only ProxyHeaderError may escape."""
    parser = ProxyHeaderParser()
    pos = 0
    try:
        for size in [*chunks, len(data)]:
            if parser.feed(data[pos : pos + size]) is not None:
                return
            pos += size
            if pos >= len(data):
                break
        parser.feed_eof()
    except ProxyHeaderError:
        pass


chunkings = st.lists(st.integers(1, 40), max_size=8)
V1_ALPHABET = b"PROXY TCP46UNKNOW0123456789abcdef.:%\r\n"


@settings(max_examples=300)
@given(st.binary(max_size=300), chunkings)
def test_random_bytes(data: bytes, chunks: list[int]) -> None:
    _feed_all(data, chunks)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(list(V1_ALPHABET)), max_size=120).map(bytes), chunkings)
def test_random_v1_like_lines(body: bytes, chunks: list[int]) -> None:
    _feed_all(b"PROXY " + body, chunks)


@settings(max_examples=300)
@given(st.integers(0x20, 0x21), st.integers(0, 255), st.binary(max_size=300), chunkings)
def test_random_v2_bodies(ver_cmd: int, fam: int, body: bytes, chunks: list[int]) -> None:
    data = V2_SIGNATURE + bytes((ver_cmd, fam)) + len(body).to_bytes(2, "big") + body
    _feed_all(data, chunks)


VALID = [
    encode_v2(src=("198.18.0.2", 1), dst=("198.18.0.1", 2), tlvs=[netns_tlv("c1")], checksum=True),
    encode_v2(src=("fd42::2", 1), dst=("fd42::1", 2), tlvs=[(0x05, b"id")]),
    encode_v2(src="/run/a", dst=b"\0b"),
    b"PROXY TCP6 fd42::2 fd42::1 40000 80\r\n",
    b"PROXY TCP4 198.18.0.2 198.18.0.1 40000 80\r\n",
]


@settings(max_examples=500)
@given(st.sampled_from(VALID), st.integers(0, 300), st.integers(0, 255), chunkings)
def test_mutated_valid_headers(header: bytes, index: int, value: int, chunks) -> None:
    data = bytearray(header)
    data[index % len(data)] = value
    _feed_all(bytes(data), chunks)


@settings(max_examples=200)
@given(st.sampled_from(VALID), st.integers(0, 300))
def test_truncated_valid_headers_need_more(header: bytes, cut: int) -> None:
    cut %= len(header)
    assert ProxyHeaderParser().feed(header[:cut]) is None
