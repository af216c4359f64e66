"""HTTPS for the API: the server certificate, a TLS context, and the trust store of client certs.

Like LXD, the TLS layer asks every client for a certificate and accepts any one; whether the
client is trusted is decided per request from the SHA-256 fingerprint of what it presented
(so an untrusted ``lxc`` still gets ``GET /1.0`` with ``auth: "untrusted"`` instead of a
handshake failure).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import datetime
import fcntl
import hashlib
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lxdproxy.errors import ConfigError, LxdError, NotFoundError

SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
TRUST_FILE = "trust.json"
_VALID_DAYS = 3650  # LXD's server certificates are valid for 10 years too


# -- certificates ------------------------------------------------------------------------------

def generate_self_signed(common_name: str, *, server: bool = True,
                         alt_names: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-384 certificate (what LXD generates) -> (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lxdproxy"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in alt_names]), critical=False)
    cert = builder.sign(key, hashes.SHA384())
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _state_path(state_dir: str | os.PathLike[str]) -> Path:
    path = Path(state_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def ensure_server_certificate(state_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``<state_dir>/server.crt`` and ``server.key``, generated on first use (key mode 0600)."""
    base = _state_path(state_dir)
    cert_path, key_path = base / SERVER_CERT, base / SERVER_KEY
    if cert_path.exists() and key_path.exists():
        try:
            x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise LxdError(f"Invalid server certificate {cert_path}: {exc}") from exc
        return cert_path, key_path
    host = socket.gethostname()
    cert_pem, key_pem = generate_self_signed(f"root@{host}", alt_names=(host,))
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def certificate_pem(state_dir: str | os.PathLike[str]) -> str:
    """The server certificate as PEM text (``environment.certificate`` in ``GET /1.0``)."""
    cert_path, _ = ensure_server_certificate(state_dir)
    return cert_path.read_text()


def server_certificate_fingerprint(state_dir: str | os.PathLike[str]) -> str:
    """SHA-256 fingerprint of the server certificate (``environment.certificate_fingerprint``)."""
    return certificate_fingerprint(x509.load_pem_x509_certificate(
        certificate_pem(state_dir).encode()))


def load_certificate(material: str | bytes | os.PathLike[str]) -> x509.Certificate:
    """A certificate from PEM text/bytes, a file path, DER bytes, or base64 DER.

    Base64 DER without PEM armour is what ``POST /1.0/certificates`` carries in LXD's API.
    Raises ConfigError on anything else.
    """
    data: bytes
    if isinstance(material, os.PathLike) or (
        isinstance(material, str) and "-----BEGIN" not in material and os.path.isfile(material)
    ):
        try:
            data = Path(material).read_bytes()
        except OSError as exc:
            raise ConfigError(f"Failed to read certificate: {exc.strerror}") from exc
    elif isinstance(material, str):
        data = material.encode()
    else:
        data = bytes(material)
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        try:
            return x509.load_der_x509_certificate(data)
        except ValueError:
            return x509.load_der_x509_certificate(base64.b64decode(data.strip(), validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ConfigError("Invalid certificate material") from exc


def certificate_fingerprint(cert: x509.Certificate | bytes) -> str:
    """SHA-256 of the DER encoding, lowercase hex (LXD's certificate fingerprint)."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


# -- TLS server context ------------------------------------------------------------------------

_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
# Kept at module level: OpenSSL holds a raw pointer to it for the process lifetime.
_ACCEPT_ANY_CERT = _VERIFY_CB(lambda preverify_ok, store_ctx: 1)
_SSL_VERIFY_PEER = 0x01


def _accept_any_client_certificate(ctx: ssl.SSLContext) -> None:
    """Make OpenSSL accept any client certificate while still requesting one.

    Python's ssl has no verify callback: with CERT_OPTIONAL a self-signed client cert fails the
    handshake. LXD (Go's tls.RequestClientCert) accepts any cert and decides trust per request,
    so we install an always-yes callback on the context's SSL_CTX through the same libssl
    ``_ssl`` is linked against. The SSL_CTX pointer is the first field after the object header
    of CPython's PySSLContext; we check it against ``ctx.options`` and the verify mode before
    touching it, and refuse rather than guess when they disagree.
    """
    import _ssl

    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_callback.restype = ctypes.c_void_p
    lib.SSL_CTX_get_verify_callback.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CB]
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    ptr = ctypes.c_void_p.from_address(id(ctx) + header).value
    if (not ptr or lib.SSL_CTX_get_options(ptr) != int(ctx.options)
            or lib.SSL_CTX_get_verify_mode(ptr) != _SSL_VERIFY_PEER):
        raise LxdError("Cannot install the client certificate callback on this Python build")
    lib.SSL_CTX_set_verify(ptr, _SSL_VERIFY_PEER, _ACCEPT_ANY_CERT)
    installed = lib.SSL_CTX_get_verify_callback(ptr)
    if installed != ctypes.cast(_ACCEPT_ANY_CERT, ctypes.c_void_p).value:
        raise LxdError("Cannot install the client certificate callback on this Python build")


def server_ssl_context(state_dir: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS server context with the state dir's certificate that requests (never requires) a
    client certificate and accepts any: check ``TrustStore.is_trusted`` on each request."""
    cert_path, key_path = ensure_server_certificate(state_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    ctx.verify_mode = ssl.CERT_OPTIONAL  # sends CertificateRequest; CPython keeps our callback
    _accept_any_client_certificate(ctx)
    return ctx


def peer_certificate_der(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """The DER certificate the client presented, or None (aiohttp:
    ``request.transport.get_extra_info("ssl_object")``)."""
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True) or None


# -- trust store -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrustedCertificate:
    fingerprint: str
    name: str
    certificate: str  # PEM
    type: str = "client"
    restricted: bool = False
    projects: tuple[str, ...] = field(default_factory=tuple)

    def to_lxd(self) -> dict[str, Any]:
        """The object of LXD's ``GET /1.0/certificates/<fingerprint>``."""
        return {"name": self.name, "type": self.type, "restricted": self.restricted,
                "projects": list(self.projects), "certificate": self.certificate,
                "fingerprint": self.fingerprint}

    @property
    def expires_at(self) -> datetime.datetime:
        cert = x509.load_pem_x509_certificate(self.certificate.encode())
        return cert.not_valid_after_utc


class TrustStore:
    """Trusted client certificates in ``<state_dir>/trust.json``.

    The file is re-read when it changes on disk, so the daemon picks up certificates added by
    ``lxdproxy config trust add --state-dir`` without a restart. Writes take an flock so the
    CLI and the daemon cannot lose each other's changes.
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = _state_path(state_dir) / TRUST_FILE
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._entries: dict[str, TrustedCertificate] = {}

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        with self._lock, open(self.path.with_name(TRUST_FILE + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, TrustedCertificate]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._entries = None, {}
            return self._entries
        if mtime != self._mtime:
            try:
                raw = json.loads(self.path.read_text())
                entries = {}
                for item in raw.get("certificates", []):
                    item["projects"] = tuple(item.get("projects", ()))
                    entry = TrustedCertificate(**item)
                    entries[entry.fingerprint] = entry
            except (ValueError, TypeError, AttributeError) as exc:
                raise LxdError(f"Corrupt trust store {self.path}: {exc}") from exc
            self._mtime, self._entries = mtime, entries
        return self._entries

    def _save(self, entries: dict[str, TrustedCertificate]) -> None:
        data = {"version": 1, "certificates": [
            {**asdict(e), "projects": list(e.projects)} for e in entries.values()]}
        _write_atomic(self.path, json.dumps(data, indent=2).encode() + b"\n", 0o600)
        self._mtime, self._entries = self.path.stat().st_mtime_ns, dict(entries)

    def add(self, pem_or_path: str | bytes | os.PathLike[str],
            name: str | None = None) -> TrustedCertificate:
        cert = load_certificate(pem_or_path)
        if not name:
            common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            name = str(common[0].value) if common else certificate_fingerprint(cert)[:12]
        return self.add_certificate(cert, name)

    def add_certificate(self, cert: x509.Certificate, name: str, *,
                        projects: tuple[str, ...] = ()) -> TrustedCertificate:
        """Trust ``cert`` as a client certificate; 409 if it is there already (LXD's text)."""
        entry = TrustedCertificate(
            fingerprint=certificate_fingerprint(cert), name=name,
            certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
            projects=projects)
        with self._file_lock():
            entries = dict(self._load())
            if entry.fingerprint in entries:
                raise LxdError("Certificate already in trust store", 409)
            entries[entry.fingerprint] = entry
            self._save(entries)
        return entry

    def update(self, fingerprint: str, *, name: str, projects: tuple[str, ...],
               certificate: x509.Certificate | None,
               check: Callable[[TrustedCertificate], None]) -> TrustedCertificate:
        """Replace the writable fields of one entry (``certificate`` None: keep it). ``check``
        sees the current entry under the lock (the ETag precondition) and may raise."""
        with self._file_lock():
            entries = dict(self._load())
            old = self._match(entries, fingerprint)
            check(old)
            new = TrustedCertificate(fingerprint=old.fingerprint, name=name,
                                     certificate=old.certificate, type=old.type,
                                     restricted=old.restricted, projects=projects)
            if certificate is not None:
                new = TrustedCertificate(
                    fingerprint=certificate_fingerprint(certificate), name=name,
                    certificate=certificate.public_bytes(serialization.Encoding.PEM).decode(),
                    type=old.type, restricted=old.restricted, projects=projects)
                if new.fingerprint != old.fingerprint and new.fingerprint in entries:
                    raise LxdError("Certificate already in trust store", 409)
            del entries[old.fingerprint]
            entries[new.fingerprint] = new
            self._save(entries)
        return new

    @staticmethod
    def _match(entries: dict[str, TrustedCertificate], fingerprint: str) -> TrustedCertificate:
        # A unique prefix is enough, as LXD's certificate endpoints allow.
        prefix = fingerprint.strip().lower()
        matches = [e for fp, e in entries.items() if prefix and fp.startswith(prefix)]
        if not matches:
            raise NotFoundError("Certificate not found")
        if len(matches) > 1:
            raise LxdError("More than one certificate matches", 400)
        return matches[0]

    def get(self, fingerprint: str) -> TrustedCertificate:
        with self._lock:
            return self._match(self._load(), fingerprint)

    def remove(self, fingerprint: str) -> TrustedCertificate:
        with self._file_lock():
            entries = dict(self._load())
            entry = self._match(entries, fingerprint)
            del entries[entry.fingerprint]
            self._save(entries)
        return entry

    def list(self) -> list[TrustedCertificate]:
        with self._lock:
            return sorted(self._load().values(), key=lambda e: (e.name, e.fingerprint))

    def is_trusted(self, der: bytes | None) -> bool:
        if not der:
            return False
        with self._lock:
            return certificate_fingerprint(der) in self._load()

