"""Incremental, strict PROXY v1/v2 header parser (bytes in, one ``ParseResult`` out; no I/O).

Strict on purpose (HAProxy proxy-protocol.txt): the receiver "must not guess", so anything that
is not a complete, well-formed header is a ``ProxyHeaderError``, decided as early as the bytes
allow (a first chunk that cannot start a header fails at once, without waiting for more).
"""

from __future__ import annotations

import ipaddress
import os
import re

from lxdproxy.proxy_protocol.crc32c import crc32c
from lxdproxy.proxy_protocol.model import (
    UNIX_PATH_LENGTH,
    V1_MAX_LENGTH,
    V2_ADDRESS_LENGTHS,
    V2_FIXED_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    V2_VALID_FAMILY_BYTES,
    Command,
    Family,
    ParseResult,
    ProxyHeaderError,
    Tlv,
    TlvType,
    Transport,
)

_V1_PREFIX = b"PROXY"
_V1_IPV4 = re.compile(rb"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
# inet_pton-style text, plus a zone: LXD (Go) writes "fe80::1%eth0" for link-local clients.
_V1_IPV6 = re.compile(rb"[0-9A-Fa-f:.]{2,45}(?:%[A-Za-z0-9_.\-]{1,15})?")
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_PROTOCOLS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
_KNOWN_TLV_TYPES = frozenset(t.value for t in TlvType)


class ProxyHeaderParser:
    """Feed it the first bytes of a connection (or one datagram) until it returns a result.

    ``feed(data)`` returns None while more bytes are needed, a ``ParseResult`` once the header is
    complete (its ``payload`` holds the bytes fed after the header), and raises
    ``ProxyHeaderError`` on bad input; after an error every call raises the same error.
    ``max_v2_length`` bounds the total v2 header size (the protocol maximum is 16 + 65535).
    """

    def __init__(self, *, max_v2_length: int = V2_MAX_LENGTH) -> None:
        if not V2_FIXED_LENGTH <= max_v2_length <= V2_MAX_LENGTH:
            raise ValueError(f"max_v2_length must be in {V2_FIXED_LENGTH}..{V2_MAX_LENGTH}")
        self._max_v2_length = max_v2_length
        self._buffer = bytearray()
        self._result: ParseResult | None = None
        self._error: ProxyHeaderError | None = None

    @property
    def result(self) -> ParseResult | None:
        return self._result

    def feed(self, data: bytes | bytearray | memoryview) -> ParseResult | None:
        if self._error is not None:
            raise self._error
        if self._result is not None:
            raise RuntimeError("PROXY header already parsed; later bytes are application data")
        self._buffer += data
        try:
            self._result = _parse(self._buffer, self._max_v2_length)
        except ProxyHeaderError as exc:
            self._error = exc
            self._buffer.clear()
            raise
        if self._result is not None:
            self._buffer.clear()
        return self._result

    def feed_eof(self) -> None:
        """The peer closed (or the datagram ended): an unfinished header is an error."""
        if self._error is not None:
            raise self._error
        if self._result is None:
            self._error = ProxyHeaderError(
                f"connection ended after {len(self._buffer)} bytes, before a complete PROXY header"
            )
            raise self._error


def parse_header(data: bytes | bytearray | memoryview) -> ParseResult:
    """Parse a header that must be complete in ``data`` (e.g. one UDP datagram)."""
    parser = ProxyHeaderParser()
    result = parser.feed(data)
    if result is None:
        parser.feed_eof()
    assert result is not None
    return result


def _parse(buf: bytearray, max_v2_length: int) -> ParseResult | None:
    n = len(buf)
    if buf[: min(n, len(V2_SIGNATURE))] == V2_SIGNATURE[:n]:
        return _parse_v2(buf, max_v2_length) if n > len(V2_SIGNATURE) else None
    if buf[: min(n, len(_V1_PREFIX))] == _V1_PREFIX[:n]:
        return _parse_v1(buf) if n > len(_V1_PREFIX) else None
    raise ProxyHeaderError(
        "missing PROXY protocol header: the connection must start with 'PROXY ' (v1) "
        f"or the v2 signature, got {bytes(buf[:16])!r}"
    )


# ---------------------------------------------------------------------------------------- v1


def _parse_v1(buf: bytearray) -> ParseResult | None:
    # Fail on a wrong prefix at once rather than waiting for 107 bytes that will never be valid.
    if buf[5] != 0x20:
        raise ProxyHeaderError("malformed PROXY v1 header: expected a space after 'PROXY'")
    proto_start = bytes(buf[6:13])
    if not any(p.startswith(proto_start[: len(p)]) for p in _V1_PROTOCOLS):
        raise ProxyHeaderError(
            f"malformed PROXY v1 header: unknown protocol in {bytes(buf[:13])!r} (expected TCP4, TCP6 or UNKNOWN)"
        )
    window = bytes(buf[:V1_MAX_LENGTH])
    lf = window.find(b"\n")
    line = window if lf < 0 else window[:lf]
    cr = line.find(b"\r")
    if cr >= 0 and cr != len(line) - 1:
        raise ProxyHeaderError("malformed PROXY v1 header: CR not followed by LF")
    if lf < 0:
        if len(buf) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"malformed PROXY v1 header: no CRLF within the first {V1_MAX_LENGTH} bytes")
        return None
    if cr < 0:
        raise ProxyHeaderError("malformed PROXY v1 header: LF not preceded by CR")
    header_length = lf + 1
    fields = line[:-1].split(b" ")
    if fields[0] != _V1_PREFIX or len(fields) < 2:
        raise ProxyHeaderError("malformed PROXY v1 header: expected 'PROXY' followed by a space")
    proto = fields[1]
    payload = bytes(buf[header_length:])
    if proto == b"UNKNOWN":
        # The spec: anything between UNKNOWN and CRLF is ignored; use the real endpoints.
        return ParseResult(1, Command.PROXY, Transport.UNSPEC, Family.UNSPEC, None, None, None, None,
                           (), header_length, payload)
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(
            f"malformed PROXY v1 header: unknown protocol {proto[:16]!r} (expected TCP4, TCP6 or UNKNOWN)"
        )
    if len(fields) != 6:
        raise ProxyHeaderError(
            "malformed PROXY v1 header: expected 'PROXY <TCP4|TCP6> <src> <dst> <sport> <dport>' with single spaces"
        )
    family = Family.INET if proto == b"TCP4" else Family.INET6
    src = _v1_address(fields[2], family, "source")
    dst = _v1_address(fields[3], family, "destination")
    sport = _v1_port(fields[4], "source")
    dport = _v1_port(fields[5], "destination")
    return ParseResult(1, Command.PROXY, Transport.STREAM, family, src, dst, sport, dport, (),
                       header_length, payload)


def _v1_address(text: bytes, family: Family, which: str) -> str:
    if family is Family.INET:
        ok = _V1_IPV4.fullmatch(text) is not None and all(int(o) <= 255 for o in text.split(b"."))
    else:
        ok = _V1_IPV6.fullmatch(text) is not None and _is_ipv6(text.decode("ascii"))
    if not ok:
        kind = "IPv4" if family is Family.INET else "IPv6"
        raise ProxyHeaderError(f"malformed PROXY v1 header: invalid {which} {kind} address {text[:46]!r}")
    return text.decode("ascii")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _v1_port(text: bytes, which: str) -> int:
    if _V1_PORT.fullmatch(text) is None or int(text) > 0xFFFF:
        raise ProxyHeaderError(f"malformed PROXY v1 header: invalid {which} port {text[:8]!r}")
    return int(text)


# ---------------------------------------------------------------------------------------- v2


def _parse_v2(buf: bytearray, max_length: int) -> ParseResult | None:
    n = len(buf)
    ver_cmd = buf[12]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"unsupported PROXY v2 version {ver_cmd >> 4} (must be 2)")
    if ver_cmd & 0xF not in (Command.LOCAL, Command.PROXY):
        raise ProxyHeaderError(f"invalid PROXY v2 command 0x{ver_cmd & 0xF:x} (must be 0 or 1)")
    if n < 14:
        return None
    fam_proto = buf[13]
    if fam_proto not in V2_VALID_FAMILY_BYTES:
        raise ProxyHeaderError(f"invalid PROXY v2 address family/protocol byte 0x{fam_proto:02x}")
    if n < V2_FIXED_LENGTH:
        return None
    length = int.from_bytes(buf[14:16], "big")
    total = V2_FIXED_LENGTH + length
    if total > max_length:
        raise ProxyHeaderError(f"PROXY v2 header of {total} bytes exceeds the {max_length}-byte limit")
    if n < total:
        return None
    header = bytes(buf[:total])
    command = Command(ver_cmd & 0xF)
    family = Family(fam_proto >> 4)
    transport = Transport(fam_proto & 0xF)
    block_length = V2_ADDRESS_LENGTHS[family]
    block = header[V2_FIXED_LENGTH:]
    src = dst = None
    sport = dport = None
    if length < block_length:
        if command is Command.PROXY:
            raise ProxyHeaderError(
                f"PROXY v2 address block too short for {family.name}: {length} bytes, need {block_length}"
            )
        tlvs: tuple[Tlv, ...] = ()  # LOCAL: the receiver just skips `len` bytes
    else:
        if command is Command.PROXY:
            src, dst, sport, dport = _v2_addresses(family, block)
        tlvs = _parse_tlvs(header, V2_FIXED_LENGTH + block_length)
    return ParseResult(2, command, transport, family, src, dst, sport, dport, tlvs, total, bytes(buf[total:]))


def _v2_addresses(
    family: Family, block: bytes
) -> tuple[str | bytes | None, str | bytes | None, int | None, int | None]:
    if family in (Family.INET, Family.INET6):
        # src address, dst address, src port, dst port (big-endian), addresses 4 or 16 bytes each
        ip = ipaddress.IPv4Address if family is Family.INET else ipaddress.IPv6Address
        n = 4 if family is Family.INET else 16
        return (
            str(ip(block[:n])),
            str(ip(block[n : 2 * n])),
            int.from_bytes(block[2 * n : 2 * n + 2], "big"),
            int.from_bytes(block[2 * n + 2 : 2 * n + 4], "big"),
        )
    if family is Family.UNIX:
        return (
            _unix_address(block[:UNIX_PATH_LENGTH]),
            _unix_address(block[UNIX_PATH_LENGTH : 2 * UNIX_PATH_LENGTH]),
            None,
            None,
        )
    return None, None, None, None


def _unix_address(raw: bytes) -> str | bytes:
    """Decode a 108-byte sun_path the way Python's getpeername() presents it.

    All zeros is an unnamed socket (""); a leading NUL is an abstract name, returned as bytes
    with the NUL and without the zero padding (so names ending in NUL cannot round-trip); else
    a NUL-terminated (or full 108-byte) filesystem path.
    """
    if raw[0] == 0:
        name = raw.rstrip(b"\0")
        return name if name else ""
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _parse_tlvs(header: bytes, offset: int) -> tuple[Tlv, ...]:
    tlvs: list[Tlv] = []
    crc_offset = -1
    end = len(header)
    while offset < end:
        if end - offset < 3:
            raise ProxyHeaderError(f"truncated PROXY v2 TLV at offset {offset}")
        tlv_type = header[offset]
        tlv_length = int.from_bytes(header[offset + 1 : offset + 3], "big")
        value_offset = offset + 3
        if value_offset + tlv_length > end:
            raise ProxyHeaderError(
                f"PROXY v2 TLV 0x{tlv_type:02x} at offset {offset} overruns the header "
                f"({tlv_length} bytes declared, {end - value_offset} left)"
            )
        if tlv_type == TlvType.CRC32C:
            if tlv_length != 4:
                raise ProxyHeaderError(f"PROXY v2 CRC32C TLV has {tlv_length} bytes, must be 4")
            if crc_offset >= 0:
                raise ProxyHeaderError("PROXY v2 header has more than one CRC32C TLV")
            crc_offset = value_offset
        tlv_id = TlvType(tlv_type) if tlv_type in _KNOWN_TLV_TYPES else tlv_type
        tlvs.append((tlv_id, header[value_offset : value_offset + tlv_length]))
        offset = value_offset + tlv_length
    if crc_offset >= 0:
        _verify_crc32c(header, crc_offset)
    return tuple(tlvs)


def _verify_crc32c(header: bytes, crc_offset: int) -> None:
    # Spec: keep the received value aside, zero the field, checksum the whole header, compare;
    # on mismatch the receiver MUST discard the header.
    received = int.from_bytes(header[crc_offset : crc_offset + 4], "big")
    zeroed = header[:crc_offset] + b"\0\0\0\0" + header[crc_offset + 4 :]
    computed = crc32c(zeroed)
    if computed != received:
        raise ProxyHeaderError(f"PROXY v2 CRC32C mismatch: header says 0x{received:08x}, computed 0x{computed:08x}")
