"""Call grants: short-lived Ed25519 JWS that let a voice worker ask tool-vault for one call's
credentials and the registry for its knowledge-base search. The gateway signs; tool-vault and
the registry verify with the public key named by `kid`."""

from __future__ import annotations

import base64
import json
import secrets
import time

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from voiceagents.contracts.calls import CallContext, CallGrantClaims


class GrantSigner:
    def __init__(self, private_key: bytes, key_id: str, lifetime_seconds: int) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        self._key_id = key_id
        self._lifetime = lifetime_seconds

    def sign(self, call: CallContext) -> str:
        now = int(time.time())
        claims = CallGrantClaims(
            room=call.room,
            call_sid=call.call_sid,
            org_id=call.org_id,
            agent_id=call.agent_id,
            iat=now,
            exp=now + self._lifetime,
            jti=secrets.token_urlsafe(16),
        )
        payload = {field: getattr(claims, field) for field in claims.__struct_fields__}
        return jwt.encode(payload, self._key, algorithm="EdDSA", headers={"kid": self._key_id})


def public_key_b64(private_key: bytes) -> str:
    public = Ed25519PrivateKey.from_private_bytes(private_key).public_key()
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def generate_key_pair(key_id: str) -> dict[str, str]:
    """A new signing key: the gateway's two settings and the public-key settings of tool-vault
    and the registry."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public_keys = json.dumps({key_id: public_key_b64(private)})
    return {
        "VA_GATEWAY_GRANT_SIGNING_KEY": base64.b64encode(private).decode(),
        "VA_GATEWAY_GRANT_KEY_ID": key_id,
        "VA_TOOLVAULT_GRANT_PUBLIC_KEYS": public_keys,
        "VA_REGISTRY_GRANT_PUBLIC_KEYS": public_keys,
    }
