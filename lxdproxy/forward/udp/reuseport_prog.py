"""The SK_REUSEPORT program that keeps a UDP client on one worker, as bytes (pure, no I/O).

One SO_REUSEPORT group per UDP listener, one socket per worker slot, and a
BPF_MAP_TYPE_REUSEPORT_SOCKARRAY (slot -> socket). The program picks
``map[ctx->hash % slots]``; ``hash`` is the kernel's hash of the datagram's 4-tuple, so one
client address:port always gets the same slot. When that slot is empty (its worker died) the
helper fails, nothing is selected, and ``SK_PASS`` lets the kernel fall back to its own hash
over the sockets still in the group: only the dead worker's clients move. A group without the
map would re-hash the clients of every worker whenever a socket joins or leaves.

The program, in the kernel selftests' assembler notation::

    r6 = r1                          ; ctx
    r2 = *(u32 *)(r1 + 32)           ; ctx->hash
    w2 %= slots
    *(u32 *)(r10 - 4) = r2           ; the key, on the stack
    r1 = r6
    r2 = map fd ll                   ; ld_imm64, src_reg BPF_PSEUDO_MAP_FD
    r3 = r10
    r3 += -4
    r4 = 0
    call bpf_sk_select_reuseport
    r0 = SK_PASS
    exit
"""

from __future__ import annotations

import struct

# From <linux/bpf.h> (uapi: stable numbers).
BPF_MAP_CREATE = 0
BPF_MAP_UPDATE_ELEM = 2
BPF_PROG_LOAD = 5
BPF_MAP_TYPE_REUSEPORT_SOCKARRAY = 20
BPF_PROG_TYPE_SK_REUSEPORT = 21
BPF_SK_REUSEPORT_SELECT = 39
BPF_FUNC_SK_SELECT_REUSEPORT = 82
BPF_PSEUDO_MAP_FD = 1
BPF_ANY = 0
SK_PASS = 1
SO_ATTACH_REUSEPORT_EBPF = 52  # <asm-generic/socket.h>

# Instruction classes and fields (<linux/bpf_common.h>, <linux/bpf.h>).
_LD, _LDX, _STX, _ALU, _JMP, _ALU64 = 0x00, 0x01, 0x03, 0x04, 0x05, 0x07
_W, _DW, _MEM, _IMM = 0x00, 0x18, 0x60, 0x00
_K, _X = 0x00, 0x08
_ADD, _MOV, _MOD = 0x00, 0xB0, 0x90
_CALL, _EXIT = 0x80, 0x90

HASH_OFFSET = 32  # offsetof(struct sk_reuseport_md, hash): two 8-byte pointers, four u32s
MAP_FD_INSN = 5  # index of the ld_imm64 whose imm is the map fd (the relocation)
LICENSE = b"Dual MIT/GPL\0"
_INSN = struct.Struct("<BBhi")  # opcode, dst_reg | src_reg << 4, off, imm


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One 8-byte eBPF instruction (little-endian: x86-64 and arm64)."""
    return _INSN.pack(code, (src << 4) | dst, off, imm)


def select_by_hash_program(slots: int, map_fd: int) -> bytes:
    """The program's instructions for a map of ``slots`` entries held by ``map_fd``."""
    if not 1 <= slots <= 0x7FFFFFFF:
        raise ValueError(f"slots must be a positive 32-bit number, not {slots}")
    if map_fd < 0:
        raise ValueError(f"not a file descriptor: {map_fd}")
    return b"".join([
        insn(_ALU64 | _MOV | _X, dst=6, src=1),
        insn(_LDX | _MEM | _W, dst=2, src=1, off=HASH_OFFSET),
        insn(_ALU | _MOD | _K, dst=2, imm=slots),
        insn(_STX | _MEM | _W, dst=10, src=2, off=-4),
        insn(_ALU64 | _MOV | _X, dst=1, src=6),
        # ld_imm64 takes two slots; the verifier swaps the fd for the map's address.
        insn(_LD | _DW | _IMM, dst=2, src=BPF_PSEUDO_MAP_FD, imm=map_fd),
        insn(0),
        insn(_ALU64 | _MOV | _X, dst=3, src=10),
        insn(_ALU64 | _ADD | _K, dst=3, imm=-4),
        insn(_ALU64 | _MOV | _K, dst=4, imm=0),
        insn(_JMP | _CALL, imm=BPF_FUNC_SK_SELECT_REUSEPORT),
        insn(_ALU64 | _MOV | _K, dst=0, imm=SK_PASS),
        insn(_JMP | _EXIT),
    ])


# -- union bpf_attr, the parts these commands read ----------------------------------------------

def map_create_attr(slots: int) -> bytes:
    """BPF_MAP_CREATE: map_type, key_size (u32 slot), value_size (u64 socket fd), max_entries,
    map_flags."""
    return struct.pack("<IIIII", BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, slots, 0)


def prog_load_attr(insns_addr: int, insn_count: int, license_addr: int, log_addr: int = 0,
                   log_size: int = 0, name: bytes = b"lxdproxy_udp") -> bytes:
    """BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
    kern_version, prog_flags, prog_name[16], prog_ifindex, expected_attach_type."""
    return struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_SK_REUSEPORT, insn_count, insns_addr,
                       license_addr, 1 if log_addr else 0, log_size, log_addr, 0, 0,
                       name[:15], 0, BPF_SK_REUSEPORT_SELECT)


def map_update_attr(map_fd: int, key_addr: int, value_addr: int, flags: int = BPF_ANY) -> bytes:
    """BPF_MAP_UPDATE_ELEM: map_fd (padded to 8), key, value, flags."""
    return struct.pack("<I4xQQQ", map_fd, key_addr, value_addr, flags)


__all__ = ["BPF_MAP_CREATE", "BPF_MAP_UPDATE_ELEM", "BPF_PROG_LOAD", "LICENSE",
           "SO_ATTACH_REUSEPORT_EBPF", "insn", "map_create_attr", "map_update_attr",
           "prog_load_attr", "select_by_hash_program"]
