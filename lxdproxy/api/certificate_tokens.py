"""LXD's certificate add tokens (api.CertificateAddToken, shared.CertificateTokenDecode):
pure decoding, no I/O. A token is base64 of JSON {client_name, fingerprint, addresses, secret,
expires_at}; ``lxc remote add <name> <token>`` sends the whole token back as ``password``."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CertificateAddToken:
    """What ``lxc config trust add`` prints: base64 of this JSON. The server never encodes it
    (lxc builds it from the token operation's metadata); it decodes what ``lxc remote add``
    sends back as ``password``."""

    client_name: str
    fingerprint: str
    addresses: tuple[str, ...]
    secret: str


def _token_json(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ValueError("not a token") from exc
    if not isinstance(raw, dict):
        raise ValueError("not a token")
    return raw


def _token_str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    return value if isinstance(value, str) else ""


def _token_addresses(raw: dict[str, Any]) -> tuple[str, ...]:
    value = raw.get("addresses")
    if not isinstance(value, list):
        return ()
    return tuple(a for a in value if isinstance(a, str))


def decode_certificate_token(text: str) -> CertificateAddToken:
    """shared.CertificateTokenDecode: ValueError unless every part is there."""
    raw = _token_json(text)
    token = CertificateAddToken(client_name=_token_str(raw, "client_name"),
                                fingerprint=_token_str(raw, "fingerprint"),
                                addresses=_token_addresses(raw), secret=_token_str(raw, "secret"))
    if not (token.client_name and token.addresses and token.secret and token.fingerprint):
        raise ValueError("incomplete certificate add token")
    return token


def is_cluster_join_token(text: str) -> bool:
    """shared.JoinTokenDecode succeeds: LXD checks these before certificate add tokens."""
    try:
        raw = _token_json(text)
    except ValueError:
        return False
    return bool(_token_str(raw, "server_name") and _token_addresses(raw)
                and _token_str(raw, "secret") and _token_str(raw, "fingerprint"))


def new_token_secret() -> str:
    """shared.RandomCryptoString: 32 random bytes, hex."""
    return secrets.token_hex(32)
