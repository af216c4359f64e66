"""CRC32C (Castagnoli), the checksum of PROXY v2's PP2_TYPE_CRC32C TLV (RFC 4960 appendix B).

Pure Python with a 256-entry table: no third-party dependency for a checksum over at most a
64 KiB header. ``crc32c(b"123456789") == 0xE3069283`` (the standard check value).
"""

from __future__ import annotations

_POLY_REFLECTED = 0x82F63B78  # 0x1EDC6F41 bit-reversed; the CRC is computed LSB-first


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Return the CRC32C of ``data``; pass a previous result as ``crc`` to continue it."""
    table = _TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
