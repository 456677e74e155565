"""Verifying call grants (the gateway's Ed25519 JWS, claims in `calls.CallGrantClaims`).

tool-vault and the registry both verify grants, each for its own audience. Public keys are
looked up by the JWS `kid`, so the gateway can rotate its signing key: add the new public key to
both, switch the gateway, drop the old key once its grants have expired.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from typing import Literal

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from voiceagents.contracts.calls import CallGrantClaims

GrantErrorCode = Literal["grant_invalid", "grant_expired"]

_REQUIRED = ["aud", "iss", "exp", "iat", "jti"]
_LEEWAY_SECONDS = 5


class GrantRejected(Exception):
    def __init__(self, code: GrantErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: GrantErrorCode = code
        self.message = message


def decode_public_keys(keys: Mapping[str, str]) -> dict[str, bytes]:
    """`{kid: base64 raw Ed25519 public key}` as raw keys; ValueError naming the bad `kid`."""
    decoded = {}
    for kid, value in keys.items():
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"[{kid!r}] must be base64 of a 32-byte Ed25519 public key")
        decoded[kid] = raw
    return decoded


class GrantVerifier:
    def __init__(
        self,
        public_keys: Mapping[str, bytes],
        *,
        audience: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = {
            kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in public_keys.items()
        }
        self._audience = audience
        self._clock = clock

    def verify(self, grant: str) -> CallGrantClaims:
        """The grant's claims if the signature, audience, issuer and expiry hold."""
        key = self._keys.get(_key_id(grant))
        if key is None:
            raise GrantRejected("grant_invalid", "the call grant's signing key is unknown")
        try:
            claims = jwt.decode(
                grant,
                key,
                algorithms=["EdDSA"],
                audience=self._audience,
                issuer="gateway",
                leeway=_LEEWAY_SECONDS,
                options={"require": _REQUIRED, "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise GrantRejected("grant_invalid", "the call grant does not verify") from None
        try:
            parsed = msgspec.convert(claims, CallGrantClaims)
        except msgspec.ValidationError:
            raise GrantRejected("grant_invalid", "the call grant lacks a required claim") from None
        # Expiry checked here, after the signature, against our (testable) clock.
        if parsed.exp + _LEEWAY_SECONDS < self._clock():
            raise GrantRejected("grant_expired", "the call grant has expired")
        return parsed


def _key_id(grant: str) -> str:
    """The `kid` of a compact JWS header, or "" — only to pick the key; PyJWT then verifies all.

    (Parsing the header here once is cheaper than PyJWT's get_unverified_header + decode.)"""
    header, dot, _ = grant.partition(".")
    if not dot or len(header) > 1024:
        return ""
    try:
        decoded = _HEADER.decode(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, msgspec.DecodeError):
        return ""
    return decoded.kid if isinstance(decoded.kid, str) else ""


class _Header(msgspec.Struct):
    kid: object = None


_HEADER = msgspec.json.Decoder(_Header)
