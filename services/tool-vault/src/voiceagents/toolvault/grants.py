"""Verifying call grants (the gateway's Ed25519 JWS) and remembering which calls have ended.

Public keys are looked up by the JWS `kid`, so the gateway can rotate its signing key: add the
new public key here, switch the gateway, drop the old key once its grants have expired.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from voiceagents.contracts.calls import GRANT_AUDIENCE, CallGrantClaims
from voiceagents.contracts.toolvault import ReleaseErrorCode

_REQUIRED = ["aud", "iss", "exp", "iat", "jti"]
_LEEWAY_SECONDS = 5


class GrantRejected(Exception):
    def __init__(self, code: ReleaseErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ReleaseErrorCode = code
        self.message = message


class GrantVerifier:
    def __init__(self, public_keys: dict[str, bytes], *, clock: Callable[[], float] = time.time):
        self._keys = {
            kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in public_keys.items()
        }
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
                audience=GRANT_AUDIENCE,
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


class Revocations:
    """Calls that have ended, by call_sid, kept as long as a grant for them could live."""

    def __init__(self, keep_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self._keep = keep_seconds
        self._clock = clock
        self._until: dict[str, float] = {}
        self._next_sweep = 0.0

    def revoke(self, call_sid: str, ended_at: float) -> None:
        self._until[call_sid] = ended_at + self._keep
        now = self._clock()
        if now >= self._next_sweep:
            self._until = {sid: t for sid, t in self._until.items() if t > now}
            self._next_sweep = now + 60.0

    def is_revoked(self, call_sid: str) -> bool:
        return call_sid in self._until

    def __len__(self) -> int:
        return len(self._until)
