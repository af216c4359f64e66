"""Server certificate, TLS context and trust store, with real TLS handshakes (no network:
socketpairs and a unix socket)."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import stat
import threading
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lxdproxy.api.tls import (
    TrustStore,
    certificate_fingerprint,
    certificate_pem,
    ensure_server_certificate,
    generate_self_signed,
    peer_certificate_der,
    server_ssl_context,
)
from lxdproxy.errors import ConfigError, LxdError, NotFoundError


def write_client_cert(tmp: Path, name: str = "client") -> tuple[Path, Path]:
    cert, key = generate_self_signed(name, server=False)
    crt_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    crt_path.write_bytes(cert)
    key_path.write_bytes(key)
    return crt_path, key_path


def der_of(pem_path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def client_context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Like lxc/pylxd: the self-signed server cert is pinned by fingerprint, not CA-verified.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def handshake(server_ctx: ssl.SSLContext,
              client_ctx: ssl.SSLContext) -> tuple[bytes | None, bytes]:
    """TLS over a socketpair -> (client cert seen by the server, server cert seen by client)."""
    import socket

    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                seen["peer"] = peer_certificate_der(tls)
                tls.sendall(b"ok")
        except Exception as exc:  # reported to the test thread below
            seen["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b) as tls:
            server_der = tls.getpeercert(binary_form=True)
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(10)
    if "error" in seen:
        raise seen["error"]  # type: ignore[misc]
    return seen["peer"], server_der  # type: ignore[return-value]


def test_server_certificate_is_generated_once(tmp_path):
    state = tmp_path / "state"
    cert_path, key_path = ensure_server_certificate(state)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    first = cert_path.read_bytes()
    assert ensure_server_certificate(state) == (cert_path, key_path)
    assert cert_path.read_bytes() == first
    pem = certificate_pem(state)
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert len(certificate_fingerprint(cert)) == 64


def test_corrupt_server_certificate_is_a_clear_error(tmp_path):
    cert_path, _ = ensure_server_certificate(tmp_path)
    cert_path.write_text("garbage")
    with pytest.raises(LxdError, match="Invalid server certificate"):
        ensure_server_certificate(tmp_path)


def test_trust_round_trip_persists(tmp_path):
    crt, _ = write_client_cert(tmp_path, "alice")
    crt2, _ = write_client_cert(tmp_path, "bob")
    store = TrustStore(tmp_path / "state")
    assert not store.is_trusted(der_of(crt))
    entry = store.add(crt)  # a path
    assert entry.name == "alice"  # defaults to the CN
    assert entry.fingerprint == certificate_fingerprint(der_of(crt))
    # LXD's POST /1.0/certificates carries base64 DER; PEM text works too.
    store.add(base64.b64encode(der_of(crt2)).decode(), name="b")
    assert store.is_trusted(der_of(crt)) and store.is_trusted(der_of(crt2))
    with pytest.raises(LxdError, match="Certificate already in trust store") as dup:
        store.add(crt.read_text())
    assert dup.value.status == 409

    # Another process (a new TrustStore on the same dir) sees the same trust.
    other = TrustStore(tmp_path / "state")
    assert [e.name for e in other.list()] == ["alice", "b"]
    removed = other.remove(entry.fingerprint[:12])  # a unique prefix is enough
    assert removed.fingerprint == entry.fingerprint
    # ...and the first store notices the file changed.
    assert not store.is_trusted(der_of(crt))
    assert store.is_trusted(der_of(crt2))
    with pytest.raises(NotFoundError, match="Certificate not found"):
        store.remove(entry.fingerprint)
    assert store.get(certificate_fingerprint(der_of(crt2))).name == "b"
    assert store.get(certificate_fingerprint(der_of(crt2))).to_lxd()["type"] == "client"


def test_invalid_certificate_is_rejected(tmp_path):
    store = TrustStore(tmp_path)
    with pytest.raises(ConfigError, match="Invalid certificate material"):
        store.add("not a certificate")
    with pytest.raises(ConfigError, match="Invalid certificate material"):
        store.add(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert store.list() == []
    assert not store.is_trusted(None) and not store.is_trusted(b"")


def test_handshake_accepts_any_client_cert_and_trust_is_per_fingerprint(tmp_path):
    state = tmp_path / "state"
    server_ctx = server_ssl_context(state)
    crt, key = write_client_cert(tmp_path)
    store = TrustStore(state)

    peer, server_der = handshake(server_ctx, client_context((crt, key)))
    # The self-signed, unknown client cert got through TLS; trust is a separate decision.
    assert peer == der_of(crt)
    assert not store.is_trusted(peer)
    store.add(crt)
    assert store.is_trusted(peer)
    assert server_der == der_of(ensure_server_certificate(state)[0])


def test_handshake_without_client_cert(tmp_path):
    peer, _ = handshake(server_ssl_context(tmp_path), client_context(None))
    assert peer is None
    assert not TrustStore(tmp_path).is_trusted(peer)


async def test_aiohttp_https_on_unix_socket_sees_client_cert(tmp_path):
    state = tmp_path / "state"
    store = TrustStore(state)
    crt, key = write_client_cert(tmp_path)
    store.add(crt)
    other_crt, other_key = write_client_cert(tmp_path, "stranger")

    async def whoami(request: web.Request) -> web.Response:
        der = peer_certificate_der(request.transport.get_extra_info("ssl_object"))
        return web.json_response({"auth": "trusted" if store.is_trusted(der) else "untrusted"})

    app = web.Application()
    app.router.add_get("/1.0", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = str(tmp_path / "https.socket")
    await web.UnixSite(runner, sock, ssl_context=server_ssl_context(state)).start()
    try:
        results = []
        for cert in ((crt, key), (other_crt, other_key), None):
            # (aiohttp's client does not do TLS over a unix socket; asyncio's streams do.)
            reader, writer = await asyncio.open_unix_connection(
                sock, ssl=client_context(cert), server_hostname="lxdproxy")
            writer.write(b"GET /1.0 HTTP/1.1\r\nHost: lxdproxy\r\nConnection: close\r\n\r\n")
            reply = await reader.read()
            writer.close()
            results.append(json.loads(reply.split(b"\r\n\r\n", 1)[1])["auth"])
        assert results == ["trusted", "untrusted", "untrusted"]
    finally:
        await runner.cleanup()
