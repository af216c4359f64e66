"""Pure parts of the certificate API: LXD's token decoding, Go's base64 errors, certificate
validity and the ETag (no sockets)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json

import pytest
from cryptography import x509

from lxdproxy.api.certificate_tokens import (
    decode_certificate_token,
    is_cluster_join_token,
    new_token_secret,
)
from lxdproxy.api.certificates import certificate_etag, go_base64_decode, validate_certificate
from lxdproxy.api.tls import TrustedCertificate, generate_self_signed
from lxdproxy.errors import LxdError

GOOD = {"client_name": "laptop", "fingerprint": "ab" * 32, "addresses": ["198.18.0.1:8443"],
        "secret": "cd" * 32, "expires_at": "0001-01-01T00:00:00Z"}


def encode(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def test_a_token_lxc_prints_decodes() -> None:
    token = decode_certificate_token(encode(GOOD))
    assert (token.client_name, token.addresses, token.secret) == (
        "laptop", ("198.18.0.1:8443",), "cd" * 32)
    assert not is_cluster_join_token(encode(GOOD))


@pytest.mark.parametrize("text", [
    "hunter2", "", encode([1]), encode({**GOOD, "secret": ""}), encode({**GOOD, "addresses": []}),
    encode({**GOOD, "client_name": 7}), encode({**GOOD, "fingerprint": None}),
    base64.b64encode(b"\xff\xfe").decode(), "A" * 10_001,
])
def test_anything_incomplete_is_not_a_token(text: str) -> None:
    with pytest.raises(ValueError):
        decode_certificate_token(text)


def test_cluster_join_tokens_are_told_apart() -> None:
    join = {"server_name": "m2", "fingerprint": "f", "addresses": ["a:1"], "secret": "s"}
    assert is_cluster_join_token(encode(join))
    assert not is_cluster_join_token(encode({**join, "server_name": ""}))
    assert not is_cluster_join_token("not base64")


def test_secrets_are_32_random_bytes_hex() -> None:
    a, b = new_token_secret(), new_token_secret()
    assert a != b and len(a) == 64 and int(a, 16) >= 0


@pytest.mark.parametrize(("text", "offset"), [
    ("not base64!", 3), ("abc", 0), ("abcde", 4), ("QUJD\nR*==", 6), ("QU=", 3), ("QU=x", 2),
    ("Q===", 1), ("QUI=x", 4), ("QUJD=", 4), ("QUJDRA==\nQQ==", 9),
])
def test_base64_errors_say_where_like_go(text: str, offset: int) -> None:
    with pytest.raises(LxdError) as err:
        go_base64_decode(text)
    assert (err.value.message, err.value.status) == (
        f"illegal base64 data at input byte {offset}", 400)


def test_base64_skips_newlines_like_go() -> None:
    assert go_base64_decode("QUJD\r\nREVG\n") == b"ABCDEF"


def test_certificate_validity_window() -> None:
    cert = x509.load_pem_x509_certificate(generate_self_signed("v", server=False)[0])
    validate_certificate(cert)
    with pytest.raises(LxdError, match="isn't valid yet"):
        validate_certificate(cert, cert.not_valid_before_utc - datetime.timedelta(seconds=1))
    with pytest.raises(LxdError, match="is expired"):
        validate_certificate(cert, cert.not_valid_after_utc + datetime.timedelta(seconds=1))


def test_etag_follows_every_field_of_the_object() -> None:
    entry = TrustedCertificate(fingerprint="ab" * 32, name="n<&>é", certificate="PEM\n")
    # Go's encoding/json: HTML characters escaped, UTF-8 kept, Encoder's trailing newline.
    body = ('{"name":"n\\u003c\\u0026\\u003eé","type":"client","restricted":false,'
            '"projects":[],"certificate":"PEM\\n","fingerprint":"' + "ab" * 32 + '"}\n')
    assert certificate_etag(entry) == hashlib.sha256(body.encode()).hexdigest()
    renamed = TrustedCertificate(fingerprint="ab" * 32, name="m", certificate="PEM\n")
    assert certificate_etag(renamed) != certificate_etag(entry)
