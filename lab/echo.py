"""A small echo server for lab tests: ``python -m lab.echo PROTO ADDR [PORT...] [options]``.

PROTO is tcp, udp, unix (stream) or unixgram; ADDR an IP (``::`` / ``0.0.0.0`` for any) or a unix
path (``@name`` for abstract). Prints READY once every socket listens. Stream connections: echo
every chunk, keep answering after the client's half-close, then close. ``--reply-after-eof``
buffers everything and answers only after EOF (the half-close test). ``--tag`` prefixes every
reply with ``<port>:`` (``unix:`` for unix) so a test can see which backend answered.
``--peercred`` answers a unix stream client with ``uid=<u> gid=<g>\\n`` (SO_PEERCRED) first.
``--proxy-header`` reads a PROXY v1/v2 header first and answers with it (repr) before echoing.
``--mode`` sets the unix socket mode (octal).
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import struct
import sys
import threading


def _addr_family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _unix_addr(path: str) -> str | bytes:
    return b"\0" + path[1:].encode() if path.startswith("@") else path


def _read_proxy_header(conn: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = conn.recv(1)
        if not chunk:
            return data
        data += chunk
        if data.startswith(b"PROXY") and data.endswith(b"\r\n"):
            return data
        if len(data) >= 16 and data[:12] == b"\r\n\r\n\x00\r\nQUIT\n":
            total = 16 + struct.unpack("!H", data[14:16])[0]
            while len(data) < total:
                more = conn.recv(total - len(data))
                if not more:
                    return data
                data += more
            return data
        if len(data) > 600:
            return data


def handle_stream(conn: socket.socket, tag: bytes, opts: argparse.Namespace) -> None:
    with conn:
        if opts.peercred and conn.family == socket.AF_UNIX:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, gid = struct.unpack("3i", creds)
            conn.sendall(f"uid={uid} gid={gid}\n".encode())
        if opts.proxy_header:
            conn.sendall(repr(_read_proxy_header(conn)).encode() + b"\n")
        buffered = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                break
            if opts.reply_after_eof:
                buffered += data
            else:
                conn.sendall(tag + data)
        if opts.reply_after_eof:
            conn.sendall(tag + buffered)
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve_stream(sock: socket.socket, tag: bytes, opts: argparse.Namespace) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle_stream, args=(conn, tag, opts), daemon=True).start()


def serve_dgram(sock: socket.socket, tag: bytes, opts: argparse.Namespace) -> None:
    while True:
        data, peer = sock.recvfrom(65536)
        if opts.proxy_header and data[:12] == b"\r\n\r\n\x00\r\nQUIT\n":
            total = 16 + struct.unpack("!H", data[14:16])[0]
            data = repr(data[:total]).encode() + b"|" + data[total:]
        if peer:
            sock.sendto(tag + data, peer)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("proto", choices=["tcp", "udp", "unix", "unixgram"])
    p.add_argument("addr")
    p.add_argument("ports", nargs="*", type=int)
    p.add_argument("--reply-after-eof", action="store_true")
    p.add_argument("--tag", action="store_true")
    p.add_argument("--peercred", action="store_true")
    p.add_argument("--proxy-header", action="store_true")
    p.add_argument("--mode", default=None)
    opts = p.parse_args()

    socks: list[tuple[socket.socket, bytes]] = []
    if opts.proto in ("unix", "unixgram"):
        kind = socket.SOCK_STREAM if opts.proto == "unix" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_UNIX, kind)
        if not opts.addr.startswith("@") and os.path.exists(opts.addr):
            os.unlink(opts.addr)
        old = os.umask(0)
        sock.bind(_unix_addr(opts.addr))
        os.umask(old)
        if opts.mode and not opts.addr.startswith("@"):
            os.chmod(opts.addr, int(opts.mode, 8))
        socks.append((sock, b"unix:" if opts.tag else b""))
    else:
        kind = socket.SOCK_STREAM if opts.proto == "tcp" else socket.SOCK_DGRAM
        for port in opts.ports:
            sock = socket.socket(_addr_family(opts.addr), kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sock.family == socket.AF_INET6 and opts.addr == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((opts.addr, port))
            socks.append((sock, f"{port}:".encode() if opts.tag else b""))
    for sock, tag in socks:
        if sock.type == socket.SOCK_STREAM:
            sock.listen(4096)
            target = serve_stream
        else:
            target = serve_dgram
        threading.Thread(target=target, args=(sock, tag, opts), daemon=True).start()
    print("READY", flush=True)
    selectors.DefaultSelector().select()  # forever; the lab kills us
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
