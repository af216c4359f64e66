"""The SK_REUSEPORT slot selector as bytes (forward/udp/reuseport_prog.py): opcodes, the ctx
offset of ``hash``, the map-fd relocation, and the bpf_attr layouts, against hand-assembled
hex (the encoding of <linux/bpf.h>, written out here independently of the builder)."""

from __future__ import annotations

import struct

import pytest

from lxdproxy.forward.udp.reuseport_prog import (
    MAP_FD_INSN,
    map_create_attr,
    map_update_attr,
    prog_load_attr,
    select_by_hash_program,
)

# slots = 2, map fd = 7
EXPECTED = [
    "bf16000000000000",  # r6 = r1
    "6112200000000000",  # r2 = *(u32 *)(r1 + 32): sk_reuseport_md.hash
    "9402000002000000",  # w2 %= 2
    "632afcff00000000",  # *(u32 *)(r10 - 4) = r2
    "bf61000000000000",  # r1 = r6
    "1812000007000000",  # r2 = map fd 7 (ld_imm64, src_reg = BPF_PSEUDO_MAP_FD)
    "0000000000000000",  #   its second half
    "bfa3000000000000",  # r3 = r10
    "07030000fcffffff",  # r3 += -4
    "b704000000000000",  # r4 = 0
    "8500000052000000",  # call 82: bpf_sk_select_reuseport
    "b700000001000000",  # r0 = SK_PASS
    "9500000000000000",  # exit
]


def _insns(code: bytes) -> list[str]:
    return [code[i:i + 8].hex() for i in range(0, len(code), 8)]


def test_the_program_is_the_hand_assembled_one() -> None:
    assert _insns(select_by_hash_program(2, 7)) == EXPECTED


def test_the_map_fd_is_the_imm_of_the_pseudo_map_load_and_nothing_else() -> None:
    a, b = select_by_hash_program(2, 7), select_by_hash_program(2, 0x01020304)
    differs = [i for i in range(len(a)) if a[i] != b[i]]
    at = MAP_FD_INSN * 8
    assert differs == [at + 4, at + 5, at + 6, at + 7]
    code, regs, off, imm = struct.unpack_from("<BBhi", b, at)
    assert (code, regs >> 4, regs & 0xF, off, imm) == (0x18, 1, 2, 0, 0x01020304)


def test_the_slot_count_is_the_modulus() -> None:
    code = select_by_hash_program(5, 7)
    assert _insns(code)[2] == "9402000005000000"
    assert _insns(code)[:2] + _insns(code)[3:] == EXPECTED[:2] + EXPECTED[3:]


@pytest.mark.parametrize(("slots", "fd"), [(0, 3), (-1, 3), (1 << 31, 3), (2, -1)])
def test_no_program_for_zero_slots_or_a_bad_fd(slots: int, fd: int) -> None:
    # A modulus of 0 is refused by the verifier; say so here, with the value.
    with pytest.raises(ValueError, match=str(slots) if fd >= 0 else "file descriptor"):
        select_by_hash_program(slots, fd)


def test_map_create_attr() -> None:
    # map_type REUSEPORT_SOCKARRAY (20), key u32, value u64 (a socket fd), entries, flags
    assert map_create_attr(4) == struct.pack("<5I", 20, 4, 8, 4, 0)


def test_prog_load_attr_layout() -> None:
    attr = prog_load_attr(0x1000, 13, 0x2000)
    assert len(attr) == 72  # up to expected_attach_type
    assert struct.unpack_from("<IIQQ", attr) == (21, 13, 0x1000, 0x2000)  # SK_REUSEPORT
    assert struct.unpack_from("<IIQ", attr, 24) == (0, 0, 0)  # no log asked
    assert attr[48:64] == b"lxdproxy_udp".ljust(16, b"\0")
    assert struct.unpack_from("<I", attr, 68) == (39,)  # BPF_SK_REUSEPORT_SELECT
    logged = prog_load_attr(0x1000, 13, 0x2000, log_addr=0x3000, log_size=4096)
    assert struct.unpack_from("<IIQ", logged, 24) == (1, 4096, 0x3000)


def test_map_update_attr_layout() -> None:
    attr = map_update_attr(9, 0x1000, 0x2000)
    assert attr == struct.pack("<IIQQQ", 9, 0, 0x1000, 0x2000, 0)  # BPF_ANY
