"""PROXY v1: the exact bytes LXD's forkproxy writes, and the strict v1 parser."""

from __future__ import annotations

import pytest

from lxdproxy.proxy_protocol.codec import (
    V1_MAX_LENGTH,
    Command,
    Family,
    ProxyHeaderError,
    ProxyHeaderParser,
    Transport,
    encode_v1,
    parse_header,
)

HAPROXY_DOC_EXAMPLE = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
FFFF6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


@pytest.mark.parametrize(
    ("client", "local", "expected"),
    [
        (("192.168.0.1", 56324), ("192.168.0.11", 443), HAPROXY_DOC_EXAMPLE),
        (("2001:db8::1", 40000), ("2001:db8::2", 80), b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 80\r\n"),
        # Python's AF_INET6 4-tuples, as getpeername()/getsockname() return them.
        (("2001:db8::1", 1, 0, 0), ("2001:db8::2", 2, 0, 0), b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
        # A v4 client on a dual-stack listener: Go prints mapped addresses as IPv4 -> TCP4.
        (("::ffff:198.18.0.5", 51000, 0, 0), ("::ffff:198.18.0.1", 8080, 0, 0),
         b"PROXY TCP4 198.18.0.5 198.18.0.1 51000 8080\r\n"),
        # Go (RFC 5952) text, not whatever the caller wrote.
        (("2001:0db8:0000:0000:0000:0000:0000:0001", 1), ("0:0::1", 2),
         b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"),
        (("1:0:0:1:0:0:1:1", 1), ("::1.2.3.4", 2), b"PROXY TCP6 1::1:0:0:1:1 ::102:304 1 2\r\n"),
        # Link-local peers: Go's TCPAddr.String keeps the zone, and so does LXD's header.
        (("fe80::1%veth0", 5, 0, 7), ("fe80::2%veth0", 6, 0, 7),
         b"PROXY TCP6 fe80::1%veth0 fe80::2%veth0 5 6\r\n"),
        ((FFFF6, 65535), (FFFF6, 65535), f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode()),
        (("0.0.0.0", 0), ("255.255.255.255", 65535), b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n"),
    ],
)  # fmt: skip
def test_encode_v1_matches_forkproxy(client, local, expected) -> None:
    assert encode_v1(client, local) == expected


def test_encode_v1_unknown_for_unix_listener() -> None:
    assert encode_v1(None, ("1.2.3.4", 80)) == b"PROXY UNKNOWN\r\n"
    assert encode_v1(("1.2.3.4", 80), None) == b"PROXY UNKNOWN\r\n"
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"


def test_encode_v1_family_follows_the_client_only_like_go() -> None:
    # forkproxy picks TCP6 iff the client text has ':'; the local side is printed as it is.
    # Mapped client + real v6 local => "TCP4 <v4> <v6>", which a strict receiver rejects.
    header = encode_v1(("::ffff:1.2.3.4", 1000, 0, 0), ("2001:db8::1", 80, 0, 0))
    assert header == b"PROXY TCP4 1.2.3.4 2001:db8::1 1000 80\r\n"
    with pytest.raises(ProxyHeaderError, match="invalid destination IPv4 address"):
        parse_header(header)
    header = encode_v1(("2001:db8::5", 1000), ("::ffff:1.2.3.4", 80))
    assert header == b"PROXY TCP6 2001:db8::5 1.2.3.4 1000 80\r\n"
    with pytest.raises(ProxyHeaderError, match="invalid destination IPv6 address"):
        parse_header(header)


@pytest.mark.parametrize(
    ("client", "local"),
    [(("localhost", 1), ("1.2.3.4", 2)), (("1.2.3.4", 70000), ("1.2.3.4", 2)),
     (("1.2.3.4", -1), ("1.2.3.4", 2)), (("1.2.3.4", "80"), ("1.2.3.4", 2)),
     (("1.2.3.4", True), ("1.2.3.4", 2)), ((b"1.2.3.4", 1), ("1.2.3.4", 2))],
)  # fmt: skip
def test_encode_v1_rejects_bad_addresses(client, local) -> None:
    with pytest.raises(ValueError):
        encode_v1(client, local)


def test_parse_haproxy_doc_example() -> None:
    result = parse_header(HAPROXY_DOC_EXAMPLE + b"GET / HTTP/1.0\r\n")
    assert result.version == 1
    assert result.command is Command.PROXY
    assert result.transport is Transport.STREAM
    assert result.family is Family.INET
    assert result.src == ("192.168.0.1", 56324)
    assert result.dst == ("192.168.0.11", 443)
    assert result.tlvs == ()
    assert result.header_length == len(HAPROXY_DOC_EXAMPLE)
    assert result.payload == b"GET / HTTP/1.0\r\n"


def test_parse_tcp6_and_zone() -> None:
    result = parse_header(b"PROXY TCP6 fe80::1%veth0 2001:db8::2 5 6\r\n")
    assert result.family is Family.INET6
    assert (result.src_address, result.dst_address) == ("fe80::1%veth0", "2001:db8::2")
    assert (result.src_port, result.dst_port) == (5, 6)


def test_parse_unknown_ignores_the_rest_of_the_line() -> None:
    for line in (b"PROXY UNKNOWN\r\n", f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()):
        result = parse_header(line + b"data")
        assert result.family is Family.UNSPEC
        assert result.src is None and result.dst is None
        assert result.header_length == len(line)
        assert result.payload == b"data"


def test_worst_case_lengths_from_the_spec() -> None:
    # The spec's worst case: UNKNOWN with two full IPv6 addresses and ports is exactly 107.
    longest = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX_LENGTH
    assert parse_header(longest).header_length == V1_MAX_LENGTH
    too_long = longest[:-2] + b" \r\n"
    with pytest.raises(ProxyHeaderError, match="no CRLF within the first 107 bytes"):
        parse_header(too_long)


def test_107_byte_limit_is_enforced_incrementally() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 bytes, no LF yet
    with pytest.raises(ProxyHeaderError, match="107"):
        parser.feed(b"x")
    # ...and the parser stays failed.
    with pytest.raises(ProxyHeaderError, match="107"):
        parser.feed(b"\r\n")


def test_crlf_as_bytes_106_107_is_accepted() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(line) == 107
    assert parse_header(line).header_length == 107


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF not preceded by CR"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx\n", "CR not followed by LF"),
        (b"PROXY TCP4 1.2.3.4\r 5.6.7.8 1 2\r\n", "CR not followed by LF"),
        (b"PROXY UNKNOWN\n", "LF not preceded by CR"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "invalid source IPv4"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", "invalid destination IPv4"),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "invalid source IPv4"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "invalid source IPv4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "invalid source IPv6"),
        (b"PROXY TCP6 ::1 ::g 1 2\r\n", "invalid destination IPv6"),
        (b"PROXY TCP6 ::1 ::1%eth0%x 1 2\r\n", "invalid destination IPv6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "invalid source port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "invalid destination port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "invalid destination port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "invalid source port"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "single spaces"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "single spaces"),
        (b"PROXY TCP4\r\n", "unknown protocol"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
        (b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "space after 'PROXY'"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "missing PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "missing PROXY protocol header"),
    ],
)
def test_parse_v1_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message):
        parse_header(data)


@pytest.mark.parametrize("first", [b"G", b"PROXX", b"PROXYX", b"PROXY X", b"PROXY TCP5", b"\r\n\r\n\x00\r\nX"])
def test_a_first_chunk_that_cannot_be_a_header_fails_at_once(first: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderParser().feed(first)


@pytest.mark.parametrize("prefix", [b"P", b"PROXY", b"PROXY ", b"PROXY TCP", b"PROXY UNKNOWN", b"\r\n\r\n\x00"])
def test_a_valid_prefix_needs_more(prefix: bytes) -> None:
    assert ProxyHeaderParser().feed(prefix) is None


def test_eof_before_the_header_is_complete() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 1.2.3.4") is None
    with pytest.raises(ProxyHeaderError, match="connection ended after 18 bytes"):
        parser.feed_eof()
    with pytest.raises(ProxyHeaderError, match="truncated|connection ended"):
        parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r")
    with pytest.raises(ProxyHeaderError, match="connection ended after 0 bytes"):
        parse_header(b"")


def test_parser_is_single_use() -> None:
    parser = ProxyHeaderParser()
    result = parser.feed(HAPROXY_DOC_EXAMPLE)
    assert result is not None and parser.result is result
    parser.feed_eof()  # complete: EOF is fine
    with pytest.raises(RuntimeError, match="already parsed"):
        parser.feed(b"more")


def test_haproxy_send_proxy_capture() -> None:
    # HAProxy 2.6.12 `server ... send-proxy`, followed by the client's b"hello".
    captured = b"PROXY TCP4 127.0.0.1 127.0.0.1 53632 9010\r\nhello"
    r = parse_header(captured)
    assert (r.src, r.dst, r.payload) == (("127.0.0.1", 53632), ("127.0.0.1", 9010), b"hello")
    assert encode_v1(("127.0.0.1", 53632), ("127.0.0.1", 9010)) == captured[: r.header_length]
