"""PROXY protocol (HAProxy proxy-protocol.txt) constants, enums, the parse result and errors.

Shared by the encoder (``proxy_header``) and the incremental parser (``header_parser``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

V2_SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
V2_FIXED_LENGTH = 16  # signature (12) + ver/cmd (1) + fam/proto (1) + len (2)
V2_MAX_LENGTH = V2_FIXED_LENGTH + 0xFFFF
V1_MAX_LENGTH = 107  # "PROXY TCP6 <39> <39> 65535 65535\r\n"; CRLF must be within it
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
UNIX_PATH_LENGTH = 108  # sizeof(sun_path) on Linux; the v2 UNIX block is 2 x 108


class ProxyProtocolError(Exception):
    """Base class of PROXY protocol errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ProxyHeaderError(ProxyProtocolError):
    """The peer sent a missing, malformed or unsupported PROXY header (h11's RemoteProtocolError).

    The connection must be dropped: the spec forbids guessing or falling back to "no header".
    """


class Command(enum.IntEnum):
    LOCAL = 0x0  # health check from the proxy itself: addresses must be ignored
    PROXY = 0x1


class Family(enum.IntEnum):
    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.IntEnum):
    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


class TlvType(enum.IntEnum):
    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    SSL_VERSION = 0x21
    SSL_CN = 0x22
    SSL_CIPHER = 0x23
    SSL_SIG_ALG = 0x24
    SSL_KEY_ALG = 0x25
    NETNS = 0x30


# Address block length per family (v2). UNSPEC carries no addresses.
V2_ADDRESS_LENGTHS: dict[Family, int] = {
    Family.UNSPEC: 0,
    Family.INET: 12,
    Family.INET6: 36,
    Family.UNIX: 2 * UNIX_PATH_LENGTH,
}

# The only family/protocol bytes the spec defines; any other value "must be rejected".
V2_VALID_FAMILY_BYTES = frozenset({0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32})

# An address as the codec sees it: (ip, port) for INET/INET6; a unix path (str) or a raw
# abstract name (bytes starting with NUL, as Python's getpeername returns it) for UNIX.
Address = tuple[str, int] | str | bytes
Tlv = tuple[int, bytes]


@dataclass(frozen=True)
class ParseResult:
    """A complete PROXY header.

    ``src_address``/``dst_address`` are IP strings for INET/INET6, a path ``str`` or an abstract
    ``bytes`` name (leading NUL) or ``""`` (unnamed) for UNIX, and None when the header carries no
    usable address (v1 UNKNOWN, v2 UNSPEC, v2 LOCAL). ``payload`` is whatever followed the
    header in the bytes fed so far; it belongs to the application stream.
    """

    version: int
    command: Command
    transport: Transport
    family: Family
    src_address: str | bytes | None
    dst_address: str | bytes | None
    src_port: int | None
    dst_port: int | None
    tlvs: tuple[Tlv, ...]
    header_length: int
    payload: bytes = b""

    @property
    def src(self) -> Address | None:
        """The source in the shape ``encode_v2``/``encode_v1`` take."""
        return _join(self.src_address, self.src_port)

    @property
    def dst(self) -> Address | None:
        return _join(self.dst_address, self.dst_port)

    def tlv(self, tlv_type: int) -> bytes | None:
        """The value of the first TLV of ``tlv_type``, or None."""
        for typ, value in self.tlvs:
            if typ == tlv_type:
                return value
        return None

    @property
    def netns(self) -> str | None:
        """PP2_TYPE_NETNS (the namespace name, ASCII), or None."""
        value = self.tlv(TlvType.NETNS)
        return None if value is None else value.decode("ascii", "replace")


def _join(address: str | bytes | None, port: int | None) -> Address | None:
    if address is None:
        return None
    if port is None:
        return address
    assert isinstance(address, str)
    return (address, port)


def netns_tlv(name: str) -> Tlv:
    """A PP2_TYPE_NETNS TLV; lxdproxy uses it to say which instance's namespace the client is in."""
    return (TlvType.NETNS, name.encode("ascii"))
