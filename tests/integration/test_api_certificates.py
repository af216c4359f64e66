"""``/1.0/certificates`` in-process over real TLS (loopback): the trust store, tokens, LXD 5.0.2's
status codes and texts, and hostile input that must store nothing and log no traceback.

One app serves two sites: HTTPS (trust decided per request from the client certificate) and
plain HTTP, which stands in for the unix socket (always trusted, no TLS data)."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from lxdproxy.api import tls
from lxdproxy.api.certificates import certificate_etag
from lxdproxy.api.lazy_trust import LazyTrustStore
from lxdproxy.daemon import Components, DaemonConfig, build_app, build_components
from lxdproxy.store import Store

Reply = tuple[int, dict[str, Any], "multidict.CIMultiDictProxy[str]"]  # noqa: F821


def der_b64(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def odd_certificate(*, days: int = 30, expired: bool = False, rsa_bits: int = 0) -> bytes:
    key: Any = rsa.generate_private_key(65537, rsa_bits) if rsa_bits else \
        ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")])
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=2 * days) if expired else now - datetime.timedelta(1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Api:
    state: Path
    https: str
    plain: str
    tmp: Path
    sessions: list[aiohttp.ClientSession]

    def client(self, name: str) -> tuple[bytes, aiohttp.ClientSession]:
        """A TLS client presenting a fresh certificate (not trusted until someone trusts it)."""
        crt, key = tls.generate_self_signed(name, server=False)
        (self.tmp / f"{name}.crt").write_bytes(crt)
        (self.tmp / f"{name}.key").write_bytes(key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(self.tmp / f"{name}.crt", self.tmp / f"{name}.key")
        session = aiohttp.ClientSession(self.https, connector=aiohttp.TCPConnector(ssl=ctx))
        self.sessions.append(session)
        return crt, session

    def local(self) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(self.plain)
        self.sessions.append(session)
        return session


async def call(session: aiohttp.ClientSession, method: str, path: str, body: Any = None,
               **headers: str) -> Reply:
    data = body if isinstance(body, bytes) else (None if body is None else json.dumps(body))
    async with session.request(method, path, data=data, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    state = tmp_path / "st"
    state.mkdir()
    config = DaemonConfig(state_dir=state, nft_table="lxdproxytest", workers=0)
    components: Components = await build_components(config, Store(tmp_path / "db"))
    info = {"certificate_pem": tls.certificate_pem(state),
            "certificate_fingerprint": tls.server_certificate_fingerprint(state),
            "addresses": ["127.0.0.1:8443"]}
    app = build_app(components, info=info, trust=tls.TrustStore(state))
    runner = web.AppRunner(app)
    await runner.setup()
    secure = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_ssl_context(state))
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    await secure.start()
    await plain.start()

    def url(site: web.TCPSite, scheme: str) -> str:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"{scheme}://127.0.0.1:{port}"

    made = Api(state, url(secure, "https"), url(plain, "http"), tmp_path, [])
    yield made
    for session in made.sessions:
        await session.close()
    await runner.cleanup()
    await components.close()


def stored(api: Api) -> list[str]:
    return [e.fingerprint for e in tls.TrustStore(api.state).list()]


async def test_trusted_client_adds_lists_edits_and_removes(api: Api) -> None:
    admin_pem, admin = api.client("admin")
    tls.TrustStore(api.state).add(admin_pem, name="admin")
    bob_pem, _ = api.client("bob")
    bob_fp = tls.certificate_fingerprint(x509.load_pem_x509_certificate(bob_pem))

    status, body, headers = await call(admin, "POST", "/1.0/certificates",
                                       {"type": "client", "certificate": der_b64(bob_pem),
                                        "name": "bob.crt"})
    assert (status, body["metadata"], headers["Location"]) == (
        201, None, f"/1.0/certificates/{bob_fp}")
    status, body, _ = await call(admin, "POST", "/1.0/certificates",
                                 {"type": "client", "certificate": der_b64(bob_pem)})
    assert (status, body["error"]) == (409, "Certificate already in trust store")

    status, body, _ = await call(admin, "GET", "/1.0/certificates")
    assert sorted(body["metadata"]) == sorted(f"/1.0/certificates/{fp}" for fp in stored(api))
    status, body, _ = await call(admin, "GET", "/1.0/certificates?recursion=1")
    assert {c["name"] for c in body["metadata"]} == {"admin", "bob.crt"}

    status, body, headers = await call(admin, "GET", f"/1.0/certificates/{bob_fp[:12]}")
    entry = tls.TrustStore(api.state).get(bob_fp)
    assert body["metadata"] == {"name": "bob.crt", "type": "client", "restricted": False,
                                "projects": [], "certificate": entry.certificate,
                                "fingerprint": bob_fp}
    etag = headers["ETag"].strip('"')
    assert etag == certificate_etag(entry)

    writable = {k: v for k, v in body["metadata"].items() if k != "fingerprint"}
    status, body, _ = await call(admin, "PUT", f"/1.0/certificates/{bob_fp}",
                                 {**writable, "name": "x"}, **{"If-Match": '"nope"'})
    assert status == 412 and body["error"].startswith("ETag does not match")
    status, body, _ = await call(admin, "PUT", f"/1.0/certificates/{bob_fp}",
                                 {**writable, "name": "bobby"}, **{"If-Match": f'"{etag}"'})
    assert (status, body["metadata"]) == (200, {})
    status, body, _ = await call(admin, "PATCH", f"/1.0/certificates/{bob_fp}",
                                 {"projects": ["default"]})
    assert status == 200
    entry = tls.TrustStore(api.state).get(bob_fp)
    assert (entry.name, entry.projects) == ("bobby", ("default",))

    # What we cannot honour is refused, and nothing changes.
    for change, code, error in [
        ({"restricted": True}, 400, "Restricted certificates are not supported by lxdproxy"),
        ({"type": "metrics"}, 400, "Metrics certificates are not supported by lxdproxy"),
        ({"type": "bogus"}, 400, "Invalid certificate type"),
        ({"projects": ["p1"]}, 404, "Project not found"),
        ({"name": 5}, 400, "json: cannot unmarshal number into Go struct field "
                           "CertificatePut.name of type string"),
        ({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
         400, "Invalid certificate material: x509: malformed certificate"),
    ]:
        status, body, _ = await call(admin, "PATCH", f"/1.0/certificates/{bob_fp}", change)
        assert (status, body["error"].split(":")[0]) == (code, error.split(":")[0]), change
        assert body["error"].startswith(error)
        assert tls.TrustStore(api.state).get(bob_fp) == entry

    status, body, _ = await call(admin, "DELETE", f"/1.0/certificates/{bob_fp[:8]}")
    assert (status, body["metadata"]) == (200, {})
    status, body, _ = await call(admin, "GET", f"/1.0/certificates/{bob_fp}")
    assert (status, body["error"]) == (404, "Certificate not found")
    status, body, _ = await call(admin, "DELETE", f"/1.0/certificates/{bob_fp}")
    assert (status, body["error"]) == (404, "Certificate not found")
    assert len(stored(api)) == 1


async def test_bad_certificates_are_refused_and_nothing_is_stored(api: Api) -> None:
    admin_pem, admin = api.client("admin")
    tls.TrustStore(api.state).add(admin_pem, name="admin")
    before = stored(api)
    cases: list[tuple[Any, int, str]] = [
        ({"type": "client", "certificate": "not base64!"}, 400,
         "illegal base64 data at input byte 3"),
        ({"type": "client", "certificate": base64.b64encode(b"\x30\x03abc" * 50).decode()},
         400, "Invalid certificate material: x509: malformed certificate"),
        ({"type": "client", "certificate": der_b64(odd_certificate(expired=True))}, 400,
         "The provided certificate is expired"),
        ({"type": "client", "certificate": der_b64(odd_certificate(rsa_bits=1024))}, 400,
         "RSA key is too weak (minimum of 2048bit)"),
        ({"type": "metrics", "certificate": der_b64(odd_certificate())}, 400,
         "Metrics certificates are not supported by lxdproxy: every trusted certificate has "
         "full access"),
        ({"type": "client", "restricted": True, "projects": ["default"],
          "certificate": der_b64(odd_certificate())}, 400,
         "Restricted certificates are not supported by lxdproxy: it cannot limit a client to "
         "projects"),
        ({"type": "", "certificate": der_b64(odd_certificate())}, 400,
         "Invalid certificate type"),
        ({"type": "client", "token": True, "certificate": der_b64(odd_certificate())}, 400,
         "Can't use certificate if token is requested"),
        ({"type": "metrics", "token": True, "name": "x"}, 400,
         "Tokens can only be issued for client certificates"),
        ({"type": "client"}, 400, "Client is already trusted"),
        ({"type": "client", "token": "yes"}, 400,
         "json: cannot unmarshal string into Go struct field CertificatesPost.token of type "
         "bool"),
        ({"projects": [1]}, 400, "json: cannot unmarshal number into Go struct field "
                                 "CertificatesPost.projects of type string"),
        (b"[1]", 400, "json: cannot unmarshal array into Go value of type api.CertificatesPost"),
        (b"{", 400, "unexpected end of JSON input"),
    ]
    for body_in, code, error in cases:
        status, body, _ = await call(admin, "POST", "/1.0/certificates", body_in)
        assert (status, body["error"]) == (code, error), body_in
    status, body, _ = await call(admin, "POST", "/1.0/certificates",
                                 b'{"certificate":"' + b"A" * (5 << 20) + b'"}')
    assert status == 413
    assert stored(api) == before


async def test_token_trusts_one_untrusted_client_once(api: Api) -> None:
    local = api.local()
    status, body, headers = await call(local, "POST", "/1.0/certificates",
                                       {"name": "laptop", "type": "client", "token": True})
    assert status == 202
    op = body["metadata"]
    assert headers["Location"] == body["operation"] == f"/1.0/operations/{op['id']}"
    assert (op["class"], op["status"], op["status_code"], op["may_cancel"],
            op["resources"]) == ("token", "Running", 103, True, None)
    meta = op["metadata"]
    assert meta["addresses"] == ["127.0.0.1:8443"]
    assert meta["fingerprint"] == tls.server_certificate_fingerprint(api.state)
    assert len(meta["secret"]) == 64 and meta["request"]["name"] == "laptop"
    status, body, _ = await call(local, "GET", "/1.0/operations")
    assert body["metadata"] == {"running": [f"/1.0/operations/{op['id']}"]}

    # What lxc prints (lxc builds it from the operation's metadata).
    token = base64.b64encode(json.dumps({
        "client_name": "laptop", "fingerprint": meta["fingerprint"],
        "addresses": meta["addresses"], "secret": meta["secret"],
        "expires_at": "0001-01-01T00:00:00Z"}).encode()).decode()
    laptop_pem, laptop = api.client("laptop-cert")
    status, body, _ = await call(laptop, "GET", "/1.0/instances")
    assert (status, body["error"]) == (403, "not authorized")
    # The client cannot pick its name, type or certificate: the token's request wins.
    status, body, headers = await call(laptop, "POST", "/1.0/certificates",
                                       {"password": token, "name": "evil", "type": "metrics",
                                        "certificate": der_b64(odd_certificate())})
    assert status == 201
    fp = tls.certificate_fingerprint(x509.load_pem_x509_certificate(laptop_pem))
    assert headers["Location"] == f"/1.0/certificates/{fp}"
    assert tls.TrustStore(api.state).get(fp).name == "laptop"
    assert stored(api) == [fp]
    status, body, _ = await call(laptop, "GET", "/1.0/instances")
    assert status == 200
    status, body, _ = await call(local, "GET", f"/1.0/operations/{op['id']}")
    assert (body["metadata"]["status"], body["metadata"]["status_code"]) == ("Cancelled", 401)

    # Replayed by someone else: single use.
    _, other = api.client("other")
    status, body, _ = await call(other, "POST", "/1.0/certificates", {"password": token})
    assert (status, body["error"]) == (403, "No matching certificate add operation found")
    assert stored(api) == [fp]


async def test_untrusted_clients_get_lxds_refusals_and_no_traceback(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    local = api.local()
    status, body, _ = await call(local, "POST", "/1.0/certificates",
                                 {"name": "x", "type": "client", "token": True})
    secret = body["metadata"]["metadata"]["secret"]
    admin_pem = odd_certificate()
    tls.TrustStore(api.state).add(admin_pem, name="someone")
    fp = stored(api)[0]

    def b64(obj: dict[str, Any]) -> str:
        return base64.b64encode(json.dumps(obj).encode()).decode()

    forged = b64({"client_name": "x", "fingerprint": "f", "addresses": ["a:1"],
                  "secret": secret[:-1] + ("0" if secret[-1] != "0" else "1")})
    join = b64({"server_name": "n", "fingerprint": "f", "addresses": ["a:1"], "secret": "s"})
    _, intruder = api.client("intruder")
    for method, path, body_in, code, error in [
        ("GET", "/1.0/certificates", None, 403, "not authorized"),
        ("GET", f"/1.0/certificates/{fp}", None, 403, "not authorized"),
        ("DELETE", f"/1.0/certificates/{fp}", None, 403, "not authorized"),
        ("PUT", f"/1.0/certificates/{fp}", {"name": "mine"}, 403, "not authorized"),
        ("GET", "/1.0/operations", None, 403, "not authorized"),
        ("POST", "/1.0/certificates", {"type": "client"}, 403, "not authorized"),
        ("POST", "/1.0/certificates", {"type": "client", "certificate": der_b64(admin_pem)},
         403, "not authorized"),
        ("POST", "/1.0/certificates", {"password": "hunter2"}, 403, "not authorized"),
        ("POST", "/1.0/certificates", {"password": forged}, 403,
         "No matching certificate add operation found"),
        ("POST", "/1.0/certificates", {"password": join}, 403,
         "No matching cluster join operation found"),
        ("POST", "/1.0/certificates", {"type": "client", "token": True, "name": "me"}, 403,
         "not authorized"),
        ("POST", "/1.0/certificates", b"\xff garbage", 400,
         "invalid UTF-8 in request body at offset 0"),
    ]:
        status, body, _ = await call(intruder, method, path, body_in)
        assert (status, body["error"]) == (code, error), (method, path, body_in)
    assert stored(api) == [fp]
    assert tls.TrustStore(api.state).get(fp).name == "someone"
    # The real token is still there, and still works.
    status, body, _ = await call(local, "GET", "/1.0/operations")
    assert len(body["metadata"]["running"]) == 1
    assert "Bad trust password" in caplog.text
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def test_revoking_a_token_cancels_its_operation(api: Api) -> None:
    local = api.local()
    _, body, _ = await call(local, "POST", "/1.0/certificates",
                            {"name": "gone", "type": "client", "token": True})
    op = body["metadata"]
    status, body, _ = await call(local, "DELETE", f"/1.0/operations/{op['id']}")
    assert (status, body["metadata"]) == (200, {})
    status, body, _ = await call(local, "DELETE", f"/1.0/operations/{op['id']}")
    assert (status, body["error"]) == (400, "Only running operations can be cancelled")
    token = base64.b64encode(json.dumps({
        "client_name": "gone", "fingerprint": op["metadata"]["fingerprint"],
        "addresses": ["127.0.0.1:8443"], "secret": op["metadata"]["secret"]}).encode()).decode()
    _, late = api.client("late")
    status, body, _ = await call(late, "POST", "/1.0/certificates", {"password": token})
    assert (status, body["error"]) == (403, "No matching certificate add operation found")
    assert stored(api) == []

    # A plain (finished) operation cannot be cancelled either.
    status, body, _ = await call(local, "POST", "/1.0/instances",
                                 {"name": "c1", "source": {"type": "none"},
                                  "config": {"user.lxdproxy.pid": "1"}})
    status, body, _ = await call(local, "DELETE", body["operation"])
    assert (status, body["error"]) == (400, "Only running operations can be cancelled")


async def test_without_https_the_store_is_served_and_tokens_are_refused(tmp_path: Path,
                                                                      aiohttp_client: Any) -> None:
    config = DaemonConfig(state_dir=tmp_path, nft_table="lxdproxytest", workers=0)
    components = await build_components(config, Store(tmp_path / "db"))
    try:
        client = await aiohttp_client(build_app(components, trust=LazyTrustStore(tmp_path)))
        resp = await client.post("/1.0/certificates",
                                 json={"name": "x", "type": "client", "token": True})
        body = await resp.json()
        assert (resp.status, body["error"]) == (
            400, "Can't issue token when server isn't listening on network")
        resp = await client.get("/1.0/certificates")
        body = await resp.json()
        assert (resp.status, body["metadata"]) == (200, [])
        crt, _key = tls.generate_self_signed("ci", server=False)
        der = base64.b64encode(ssl.PEM_cert_to_DER_cert(crt.decode())).decode()
        resp = await client.post("/1.0/certificates", json={"name": "ci", "type": "client",
                                                            "certificate": der})
        assert resp.status == 201, await resp.text()  # SyncResponseLocation, as LXD
        resp = await client.get("/1.0/certificates?recursion=1")
        (entry,) = (await resp.json())["metadata"]
        assert entry["name"] == "ci"
    finally:
        await components.close()
