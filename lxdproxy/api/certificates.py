"""``/1.0/certificates``: LXD 5.0.2's trust API (lxd/certificates.go) over the TrustStore.

Trusted clients list, add, edit and remove certificates and issue certificate add tokens
(``lxc config trust add`` without a file). An untrusted TLS client may only ``POST`` here, with
a token as ``password``: that trusts the certificate it presented (``lxc remote add <name>
<token>``). Tokens are running operations of class ``token`` in the OperationRegistry, as in
LXD: in memory only, single use, cancelled by ``DELETE /1.0/operations/<id>``. LXD 5.0.2 tokens
expire only if ``core.remote_token_expiry`` is set; lxdproxy has no server config, so they do
not, and there is no ``core.trust_password`` either (LXD's answer when none is set: 403).

What we cannot honour is refused (400) rather than stored: ``restricted: true`` (per-project
access), and ``metrics``/``server`` certificates (every trusted certificate here is an admin).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import string
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lxdproxy.api.certificate_tokens import (
    decode_certificate_token,
    is_cluster_join_token,
    new_token_secret,
)
from lxdproxy.api.envelopes import async_response, check_if_match, sync_body, sync_response
from lxdproxy.api.events import EventHub
from lxdproxy.api.operations import Operation, OperationRegistry
from lxdproxy.api.request_json import _go_type, decode_object
from lxdproxy.errors import LxdError, NotFoundError
from lxdproxy.forward.rate_limited_log import RateLimitedLog

if TYPE_CHECKING:  # cryptography (~14 MiB) is loaded only by a daemon serving HTTPS (tls.py)
    from cryptography import x509

    from lxdproxy.api.tls import TrustedCertificate, TrustStore

log = logging.getLogger("lxdproxy.api.certificates")

# Set by app.tls_trust on every request: False for an HTTPS client whose certificate is not
# trusted; absent (trusted) over the unix socket.
TRUSTED = web.RequestKey("trusted", bool)

CERTIFICATE_TYPES = ("client", "server", "metrics")
TOKEN_DESCRIPTION = "Executing operation"  # operationtype.CertificateAddToken has no own text
FORBIDDEN = "not authorized"  # response.Forbidden(nil)

# Go field types of api.CertificatesPost / api.CertificatePut (bodies are type-checked first,
# as json.Decode does, so a wrong type is a 400 before anything else happens).
_FIELDS: dict[str, tuple[type, str]] = {
    "name": (str, "string"), "type": (str, "string"), "restricted": (bool, "bool"),
    "projects": (list, "[]string"), "certificate": (str, "string"),
    "password": (str, "string"), "token": (bool, "bool"),
}
_PUT_FIELDS = ("name", "type", "restricted", "projects", "certificate")
_B64 = frozenset(string.ascii_letters + string.digits + "+/")


def _decode(raw: bytes, struct: str, fields: tuple[str, ...]) -> dict[str, Any]:
    body = decode_object(raw, f"api.{struct}")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key not in fields or value is None:
            continue  # Go ignores unknown keys; null leaves the zero value
        kind, go_type = _FIELDS[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise LxdError(f"json: cannot unmarshal {_go_type(value)} into Go struct field "
                           f"{struct}.{key} of type {go_type}", 400)
        if key == "projects":
            for item in value:
                if not isinstance(item, str):
                    raise LxdError(f"json: cannot unmarshal {_go_type(item)} into Go struct "
                                   f"field {struct}.projects of type string", 400)
        out[key] = value
    return out


def _base64_error(text: str) -> int | None:
    """Where Go's StdEncoding decoder fails (an offset into ``text``), or None. It skips CR/LF
    anywhere, and wants full quanta, "=" padding only at the end."""
    j, n, si = 0, len(text), 0
    while si < n:
        ch = text[si]
        si += 1
        if ch in "\r\n":
            continue
        if ch != "=":
            if ch not in _B64:
                return si - 1
            j = (j + 1) % 4
            continue
        if j < 2:
            return si - 1
        if j == 2:  # "==" needed
            while si < n and text[si] in "\r\n":
                si += 1
            if si == n:
                return n
            if text[si] != "=":
                return si - 1  # (sic) Go reports the first "="
            si += 1
        while si < n and text[si] in "\r\n":
            si += 1
        return si if si < n else None
    return n - j if j else None


def go_base64_decode(text: str) -> bytes:
    """base64.StdEncoding.DecodeString, with Go's error text."""
    offset = _base64_error(text)
    if offset is not None:
        raise LxdError(f"illegal base64 data at input byte {offset}", 400)
    return base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)


def _parse_der(der: bytes) -> x509.Certificate:
    from cryptography import x509
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise LxdError("Invalid certificate material: x509: malformed certificate", 400) from None


def _parse_pem(text: str) -> x509.Certificate:
    from cryptography import x509
    try:
        return x509.load_pem_x509_certificate(text.encode())
    except ValueError:
        raise LxdError("Invalid certificate material: x509: malformed certificate", 400) from None


def validate_certificate(cert: x509.Certificate,
                         now: datetime.datetime | None = None) -> None:
    """LXD's certificateValidate."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    now = now or datetime.datetime.now(datetime.UTC)
    if now < cert.not_valid_before_utc:
        raise LxdError("The provided certificate isn't valid yet", 400)
    if now > cert.not_valid_after_utc:
        raise LxdError("The provided certificate is expired", 400)
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise LxdError("RSA key is too weak (minimum of 2048bit)", 400)


def _honourable(cert_type: str, restricted: bool, projects: list[str]) -> None:
    if cert_type not in CERTIFICATE_TYPES:
        raise LxdError("Invalid certificate type", 400)
    if cert_type != "client":
        raise LxdError(f"{cert_type.capitalize()} certificates are not supported by lxdproxy: "
                       "every trusted certificate has full access", 400)
    if restricted:
        raise LxdError("Restricted certificates are not supported by lxdproxy: it cannot "
                       "limit a client to projects", 400)
    if any(p != "default" for p in projects):
        raise NotFoundError("Project not found")  # only the default project exists


def _go_json(value: Any) -> str:
    # encoding/json: UTF-8 as is, HTML characters escaped, trailing newline from Encoder.
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text + "\n"


def certificate_etag(entry: TrustedCertificate) -> str:
    """util.EtagHash of the api.Certificate, as LXD's GET sends it."""
    return hashlib.sha256(_go_json(entry.to_lxd()).encode()).hexdigest()


# -- handlers ---------------------------------------------------------------------------------

class CertificateApi:
    """The handlers, bound to the app's trust store, operations, events and server identity."""

    def __init__(self, trust: TrustStore | None, ops: OperationRegistry, events: EventHub,
                 info: dict[str, Any]) -> None:
        self.trust = trust
        self.ops = ops
        self.events = events
        self.addresses: list[str] = list(info.get("addresses") or [])
        self.fingerprint = str(info.get("certificate_fingerprint", ""))
        self.log = RateLimitedLog(log, "certificates")  # untrusted peers must not fill a disk

    def _store(self) -> TrustStore:
        if self.trust is None:
            raise LxdError("Certificates are not supported without the HTTPS listener: start "
                           "the daemon with --https", 400)
        return self.trust

    def _lifecycle(self, action: str, fingerprint: str) -> None:
        self.events.publish("lifecycle", {
            "action": action, "source": f"/1.0/certificates/{fingerprint}", "context": {},
            "requestor": {"username": "", "protocol": "unix", "address": ""}})

    async def list(self, request: web.Request) -> web.Response:
        entries = self._store().list()
        try:  # util.IsRecursionRequest: any integer but 0; garbage is 0
            recursion = int(request.query.get("recursion", "0"))
        except ValueError:
            recursion = 0
        if recursion:
            return sync_response([e.to_lxd() for e in entries])
        return sync_response([f"/1.0/certificates/{e.fingerprint}" for e in entries])

    async def get(self, request: web.Request) -> web.Response:
        entry = self._store().get(request.match_info["fingerprint"])
        return sync_response(entry.to_lxd(), etag=certificate_etag(entry))

    async def post(self, request: web.Request) -> web.Response:
        req = _decode(await request.read(), "CertificatesPost", tuple(_FIELDS))
        token, certificate = bool(req.get("token")), str(req.get("certificate", ""))
        if token and certificate:
            raise LxdError("Can't use certificate if token is requested", 400)
        if token:
            if req.get("type", "") != "client":
                raise LxdError("Tokens can only be issued for client certificates", 400)
            if not self.addresses:
                raise LxdError("Can't issue token when server isn't listening on network", 400)
        trusted = request.get(TRUSTED, True)
        if trusted and not certificate and not token:
            raise LxdError("Client is already trusted", 400)
        if not trusted:
            req = self._redeem(request, req)
            token, certificate = False, ""
        store = self._store()
        projects = list(req.get("projects") or [])
        _honourable(str(req.get("type", "")), bool(req.get("restricted")), projects)
        if token:
            return self._issue_token(str(req.get("name", "")), projects)
        if certificate:
            cert = _parse_der(go_base64_decode(certificate))
        else:
            cert = self._peer_certificate(request)
        validate_certificate(cert)
        name = str(req.get("name", ""))
        if not name:
            from cryptography.x509.oid import NameOID

            common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            name = str(common[0].value) if common else (request.remote or "")
        entry = store.add_certificate(cert, name, projects=tuple(projects))
        self._lifecycle("certificate-created", entry.fingerprint)
        location = f"/1.0/certificates/{entry.fingerprint}"
        body = json.dumps(sync_body(None), separators=(",", ":")) + "\n"
        return web.Response(status=201, body=body.encode(), headers={
            "Content-Type": "application/json", "Location": location})

    def _redeem(self, request: web.Request, req: dict[str, Any]) -> dict[str, Any]:
        """An untrusted client: only a valid, unused token lets it in; the request then is the
        token's (name, type, projects), never the client's own."""
        if req.get("token"):
            raise LxdError(FORBIDDEN, 403)
        password = str(req.get("password", ""))
        if not password:
            raise LxdError(FORBIDDEN, 403)
        if is_cluster_join_token(password):
            raise LxdError("No matching cluster join operation found", 403)
        try:
            offered = decode_certificate_token(password)
        except ValueError:
            # Not a token, so a trust password: none is ever set (PasswordCheck fails).
            self.log.warning("Bad trust password from %s", request.remote)
            raise LxdError(FORBIDDEN, 403) from None
        op = self._matching_token(offered.secret)
        if op is None:
            self.log.warning("No matching certificate add token from %s", request.remote)
            raise LxdError("No matching certificate add operation found", 403)
        self._cancel(op.id)  # single use, before anything else can fail (as LXD)
        meta = op.metadata or {}
        token_req = meta.get("request") or {}
        return {"name": token_req.get("name", ""), "type": token_req.get("type", "client"),
                "restricted": bool(token_req.get("restricted")),
                "projects": list(token_req.get("projects") or [])}

    def _matching_token(self, secret: str) -> Operation | None:
        found = None
        for op in self.ops.running_tokens():
            stored = str((op.metadata or {}).get("secret", ""))
            # Every token is compared, in constant time each: no early exit to time.
            if hmac.compare_digest(stored.encode(), secret.encode()) and found is None:
                found = op
        return found

    def _cancel(self, op_id: str) -> Operation:
        op = self.ops.cancel(op_id)
        self.events.publish("operation", op.to_json())
        return op

    def _issue_token(self, name: str, projects: list[str]) -> web.Response:
        # Key order of Go's map marshalling (sorted), the request as api.CertificatesPost.
        meta = {"addresses": list(self.addresses), "fingerprint": self.fingerprint,
                "request": {"name": name, "type": "client", "restricted": False,
                            "projects": projects, "certificate": "", "password": "",
                            "token": True},
                "secret": new_token_secret()}
        op = self.ops.token(TOKEN_DESCRIPTION, meta)
        self.events.publish("operation", op.to_json())
        return async_response(op.url, op.to_json())

    @staticmethod
    def _peer_certificate(request: web.Request) -> x509.Certificate:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        if ssl_object is None:
            raise LxdError("Can't use TLS data on non-TLS link", 400)
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            raise LxdError("No client certificate provided", 400)
        return _parse_der(der)

    async def put(self, request: web.Request) -> web.Response:
        store = self._store()
        current = store.get(request.match_info["fingerprint"])
        check_if_match(request.headers.get("If-Match"), certificate_etag(current))
        req = _decode(await request.read(), "CertificatePut", _PUT_FIELDS)
        return self._update(request, store, current, req)

    async def patch(self, request: web.Request) -> web.Response:
        store = self._store()
        current = store.get(request.match_info["fingerprint"])
        check_if_match(request.headers.get("If-Match"), certificate_etag(current))
        req = {**current.to_lxd(), **_decode(await request.read(), "CertificatePut",
                                             _PUT_FIELDS)}
        return self._update(request, store, current, req)

    def _update(self, request: web.Request, store: TrustStore, current: TrustedCertificate,
                req: dict[str, Any]) -> web.Response:
        projects = list(req.get("projects") or [])
        _honourable(str(req.get("type", "")), bool(req.get("restricted")), projects)
        new_pem = str(req.get("certificate", ""))
        cert = None
        if new_pem and new_pem != current.certificate:
            cert = _parse_pem(new_pem)
            validate_certificate(cert)
        etag = certificate_etag(current)
        if_match = request.headers.get("If-Match")
        # The ETag is checked again under the store's lock: a concurrent write loses cleanly.
        store.update(current.fingerprint, name=str(req.get("name", "")),
                     projects=tuple(projects), certificate=cert,
                     check=lambda now: check_if_match(
                         if_match or etag, certificate_etag(now)))
        self._lifecycle("certificate-updated", current.fingerprint)
        return sync_response({})

    async def delete(self, request: web.Request) -> web.Response:
        entry = self._store().remove(request.match_info["fingerprint"])
        self._lifecycle("certificate-deleted", entry.fingerprint)
        return sync_response({})


def add_routes(app: web.Application, api: CertificateApi) -> None:
    r = app.router
    r.add_get("/1.0/certificates", api.list)
    r.add_post("/1.0/certificates", api.post)
    r.add_get("/1.0/certificates/{fingerprint}", api.get)
    r.add_put("/1.0/certificates/{fingerprint}", api.put)
    r.add_patch("/1.0/certificates/{fingerprint}", api.patch)
    r.add_delete("/1.0/certificates/{fingerprint}", api.delete)


def untrusted_may_post(request: web.Request) -> bool:
    """LXD's AllowUntrusted: the one write an untrusted client may send."""
    return request.method == "POST" and request.path.rstrip("/") == "/1.0/certificates"

