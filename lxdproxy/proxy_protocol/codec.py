"""PROXY protocol codec: the v1 header as LXD's forkproxy writes it, v2 with TLVs, the parser.

Pure: bytes and addresses in, bytes out. The parser lives in ``header_parser`` and the shared
types in ``header_model``; both are re-exported here so callers import one module.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence

from lxdproxy.proxy_protocol.crc32c import crc32c
from lxdproxy.proxy_protocol.model import (
    UNIX_PATH_LENGTH,
    V1_MAX_LENGTH,
    V1_UNKNOWN,
    V2_ADDRESS_LENGTHS,
    V2_FIXED_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    Address,
    Command,
    Family,
    ParseResult,
    ProxyHeaderError,
    ProxyProtocolError,
    Tlv,
    TlvType,
    Transport,
    netns_tlv,
)
from lxdproxy.proxy_protocol.parser import ProxyHeaderParser, parse_header

__all__ = [
    "V1_MAX_LENGTH",
    "V1_UNKNOWN",
    "V2_MAX_LENGTH",
    "V2_SIGNATURE",
    "Address",
    "Command",
    "Family",
    "ParseResult",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "Tlv",
    "TlvType",
    "Transport",
    "encode_v1",
    "encode_v2",
    "netns_tlv",
    "parse_header",
]

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
# A socket address: (host, port) or Python's AF_INET6 4-tuple (host, port, flowinfo, scope_id).
SockAddr = Sequence[object]


# ---------------------------------------------------------------------------------------- v1


def encode_v1(client: SockAddr | None, local: SockAddr | None) -> bytes:
    """The v1 header LXD's forkproxy writes for an accepted connection (byte for byte).

    ``client`` is the peer address, ``local`` the accepting socket's own address (what the client
    dialled, not the target). Either None (a unix listener) gives ``PROXY UNKNOWN\\r\\n``.

    Like Go (``net.IP.String``), IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``, as a dual-stack
    Python socket reports a v4 peer) print in dotted IPv4 form, and IPv6 addresses print in
    RFC 5952 form with any ``%zone`` kept. Like forkproxy, the family is TCP6 iff the *client* text
    contains ``:``; the local address does not take part. So a mapped client with a real-v6 local
    address gives ``PROXY TCP4 1.2.3.4 2001:db8::1 ...``, and a v6 client with a v4 local gives
    TCP6 with a dotted local. We replicate those bytes; a strict receiver (HAProxy, our own parser)
    rejects them, as it rejects LXD's. A socket cannot normally produce that mix (both ends of one
    TCP connection share a family), so it does not arise in practice.
    """
    if client is None or local is None:
        return V1_UNKNOWN
    client_host, client_port = _go_host(client[0]), _port(client[1])
    local_host, local_port = _go_host(local[0]), _port(local[1])
    proto = "TCP6" if ":" in client_host else "TCP4"
    header = f"PROXY {proto} {client_host} {local_host} {client_port} {local_port}\r\n"
    return header.encode("ascii")


def _go_host(host: object) -> str:
    """Format an IP the way Go's net.IP.String does (what LXD's SplitHostPort hands on)."""
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # To4() != nil => dotted quad
    return str(ip)  # Python keeps "%zone", as Go's TCPAddr.String does


# ---------------------------------------------------------------------------------------- v2


def encode_v2(
    command: Command = Command.PROXY,
    transport: Transport = Transport.STREAM,
    src: Address | SockAddr | None = None,
    dst: Address | SockAddr | None = None,
    tlvs: Iterable[Tlv] = (),
    *,
    checksum: bool = False,
) -> bytes:
    """A binary v2 header.

    The family follows the addresses: ``(ip, port)`` pairs give INET (both IPv4, IPv4-mapped
    IPv6 counting as IPv4, so a dual-stack listener's v4 clients are sent as INET) or INET6 (an
    IPv4 side is then sent IPv4-mapped, since v2 has one family for both); ``str`` paths or
    ``bytes`` raw sun_path names (abstract: leading NUL) give UNIX; both None gives UNSPEC
    (byte 0x00, the transport is then not sent). Zones (``%eth0``) cannot be carried and are
    dropped. ``checksum=True`` appends a CRC32C TLV computed over the finished header.
    """
    command = Command(command)
    transport = Transport(transport)
    family, block = _address_block(src, dst)
    if family is Family.UNSPEC:
        fam_proto = 0x00
    elif transport is Transport.UNSPEC:
        raise ValueError("a PROXY v2 header with addresses needs transport STREAM or DGRAM")
    else:
        fam_proto = (family << 4) | transport
    assert len(block) == V2_ADDRESS_LENGTHS[family]
    body = bytearray(block)
    for tlv_type, value in tlvs:
        if tlv_type == TlvType.CRC32C:
            raise ValueError("pass checksum=True instead of a CRC32C TLV")
        body += _tlv(tlv_type, value)
    crc_at = -1
    if checksum:
        crc_at = V2_FIXED_LENGTH + len(body) + 3
        body += _tlv(TlvType.CRC32C, b"\0\0\0\0")
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 header body of {len(body)} bytes exceeds 65535")
    header = bytearray(V2_SIGNATURE)
    header += bytes((0x20 | command, fam_proto))
    header += len(body).to_bytes(2, "big")
    header += body
    if crc_at >= 0:
        header[crc_at : crc_at + 4] = crc32c(header).to_bytes(4, "big")
    return bytes(header)


def _tlv(tlv_type: int, value: bytes) -> bytes:
    if not 0 <= tlv_type <= 0xFF:
        raise ValueError(f"TLV type {tlv_type} is not a byte")
    value = bytes(value)
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{tlv_type:02x} value of {len(value)} bytes exceeds 65535")
    if tlv_type == TlvType.UNIQUE_ID and len(value) > 128:
        raise ValueError("PP2_TYPE_UNIQUE_ID must not be longer than 128 bytes")
    return bytes((tlv_type,)) + len(value).to_bytes(2, "big") + value


def _address_block(src: Address | SockAddr | None, dst: Address | SockAddr | None) -> tuple[Family, bytes]:
    if src is None and dst is None:
        return Family.UNSPEC, b""
    if src is None or dst is None:
        raise ValueError("PROXY v2 needs both addresses or neither")
    src_unix, dst_unix = isinstance(src, str | bytes), isinstance(dst, str | bytes)
    if src_unix and dst_unix:
        return Family.UNIX, _sun_path(src) + _sun_path(dst)  # type: ignore[arg-type]
    if src_unix or dst_unix:
        raise ValueError("PROXY v2 cannot mix a unix address with an IP address")
    src_ip, dst_ip = _unmapped(_ip(src[0])), _unmapped(_ip(dst[0]))  # type: ignore[index]
    ports = _port(src[1]).to_bytes(2, "big") + _port(dst[1]).to_bytes(2, "big")  # type: ignore[index]
    if isinstance(src_ip, ipaddress.IPv4Address) and isinstance(dst_ip, ipaddress.IPv4Address):
        return Family.INET, src_ip.packed + dst_ip.packed + ports
    return Family.INET6, _v6_packed(src_ip) + _v6_packed(dst_ip) + ports


def _unmapped(ip: IPAddr) -> IPAddr:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _v6_packed(ip: IPAddr) -> bytes:
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed  # the scope id is not part of .packed


def _sun_path(address: str | bytes) -> bytes:
    raw = os.fsencode(address) if isinstance(address, str) else bytes(address)
    if len(raw) > UNIX_PATH_LENGTH:
        raise ValueError(f"unix address of {len(raw)} bytes exceeds {UNIX_PATH_LENGTH}")
    if raw[:1] != b"\0" and b"\0" in raw:
        raise ValueError(f"unix path {address!r} contains a NUL byte")
    return raw.ljust(UNIX_PATH_LENGTH, b"\0")


# ---------------------------------------------------------------------------------------- shared


def _ip(host: object) -> IPAddr:
    if not isinstance(host, str):
        raise ValueError(f"expected an IP address string, got {host!r}")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address: {host!r}") from None


def _port(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    return port
