"""Verifying call grants (the gateway's Ed25519 JWS, claims in `calls.CallGrantClaims`).

tool-vault and the registry both verify grants, each for its own audience. Public keys are
looked up by the JWS `kid`, so the gateway can rotate its signing key: add the new public key to
both, switch the gateway, drop the old key once its grants have expired.

PyJWT parses the JWS and checks its `alg`; the Ed25519 signature itself is checked by libsodium
(PyNaCl), in half of OpenSSL's time on the benchmark machine (a whole grant in ~170 µs instead of
~285; tool-vault verifies one on every release). The claims are then decoded by msgspec and
checked here.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn

import jwt
import msgspec
from jwt.algorithms import Algorithm
from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidKeyError
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from voiceagents.contracts.calls import CallGrantClaims

GrantErrorCode = Literal["grant_invalid", "grant_expired"]

_ISSUER = "gateway"
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
        self._keys = dict(public_keys)
        self._audience = audience
        self._clock = clock

    def verify(self, grant: str) -> CallGrantClaims:
        """The grant's claims if the signature, audience, issuer and expiry hold."""
        key = self._keys.get(_key_id(grant))
        if key is None:
            raise GrantRejected("grant_invalid", "the call grant's signing key is unknown")
        try:
            payload = _JWS.decode(grant, key, algorithms=["EdDSA"])
        except jwt.InvalidTokenError:
            raise GrantRejected("grant_invalid", "the call grant does not verify") from None
        try:
            claims = _CLAIMS.decode(payload)
        except msgspec.DecodeError:
            raise GrantRejected("grant_invalid", "the call grant lacks a required claim") from None
        audiences = [claims.aud] if isinstance(claims.aud, str) else claims.aud
        if self._audience not in audiences:
            raise GrantRejected("grant_invalid", "the call grant is not for this service")
        if claims.iss != _ISSUER:
            raise GrantRejected("grant_invalid", "the call grant is not from the gateway")
        now = self._clock()
        if claims.iat > now + _LEEWAY_SECONDS:
            raise GrantRejected("grant_invalid", "the call grant is issued in the future")
        if claims.exp + _LEEWAY_SECONDS < now:
            raise GrantRejected("grant_expired", "the call grant has expired")
        return claims


class _SignedClaims(CallGrantClaims, frozen=True, kw_only=True):
    """The claims as they must be signed: audience and issuer present, not defaulted."""

    aud: str | list[str]
    iss: str


_CLAIMS = msgspec.json.Decoder(_SignedClaims)


class _Ed25519BySodium(Algorithm):
    """PyJWT's `EdDSA` for Ed25519 public keys, verified by libsodium. Verification only: the
    gateway signs with PyJWT's own EdDSA."""

    def prepare_key(self, key: Any) -> VerifyKey:
        if not isinstance(key, bytes) or len(key) != 32:
            raise InvalidKeyError("a raw 32-byte Ed25519 public key is needed")
        return VerifyKey(key)

    def verify(self, msg: bytes, key: VerifyKey, sig: bytes) -> bool:
        try:
            key.verify(msg, sig)
        except (BadSignatureError, ValueError):  # ValueError: not 64 bytes
            return False
        return True

    def sign(self, msg: bytes, key: Any) -> NoReturn:
        raise NotImplementedError("grants are signed by the gateway")

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> NoReturn:
        raise NotImplementedError

    @staticmethod
    def from_jwk(jwk: Any) -> NoReturn:
        raise NotImplementedError


_JWS = PyJWS(algorithms=[])
_JWS.register_algorithm("EdDSA", _Ed25519BySodium())


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
