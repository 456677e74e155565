"""API keys: random, shown once, stored as a SHA-256 hash; two roles.

A key reads `va_<prefix>_<secret>`. The prefix finds the row; the whole key is compared by hash
(constant time). Keys carry 256 random bits, so a fast hash is the right one (as for GitHub
tokens); a slow password hash would only slow every request down.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
from litestar import Request
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from voiceagents.registry.db import Connection
from voiceagents.registry.problems import Forbidden, NotFound, Unauthorized

Role = Literal["platform_admin", "org_admin"]
_KEY_PREFIX = "va_"
_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the API key's id and role, and its organization for an org admin."""

    key_id: str
    role: Role
    organization_id: str | None

    @property
    def is_platform_admin(self) -> bool:
        return self.role == "platform_admin"

    def scope(self) -> str | None:
        """The only organization this caller may see, or None for every organization."""
        return None if self.is_platform_admin else self.organization_id

    def require_platform_admin(self, action: str) -> None:
        if not self.is_platform_admin:
            raise Forbidden(f"only a platform_admin key may {action}")

    def check_org(self, organization_id: str, field: str | None = "organization_id") -> None:
        """An org admin sees its own organization only; any other one does not exist for it."""
        if not self.is_platform_admin and organization_id != self.organization_id:
            raise NotFound(f"organization {organization_id} not found", field=field)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    id: str
    key: str
    role: Role
    organization_id: str | None
    name: str
    created_at: datetime


_HEX = frozenset("0123456789abcdef")


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _bearer_key(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send the API key as `Authorization: Bearer <key>`")
    return key


def _split(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else None."""
    if not key.startswith(_KEY_PREFIX):
        return None
    prefix, sep, secret = key[len(_KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != 12 or len(secret) < 32 or not _HEX.issuperset(prefix):
        return None
    return prefix


async def issue_key(
    connection: Connection | asyncpg.Pool[Any],
    *,
    role: Role,
    organization_id: str | None,
    name: str,
) -> IssuedKey:
    """Create a key; the clear key exists only in the returned value."""
    prefix = secrets.token_hex(6)
    key = f"{_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key_id = str(uuid.uuid4())
    row = await connection.fetchrow(
        """
        INSERT INTO api_keys (id, prefix, secret_hash, role, organization_id, name)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING created_at
        """,
        key_id,
        prefix,
        _hash(key),
        role,
        organization_id,
        name,
    )
    assert row is not None
    return IssuedKey(
        id=key_id,
        key=key,
        role=role,
        organization_id=organization_id,
        name=name,
        created_at=row["created_at"],
    )


class KeyVerifier:
    """Checks bearer keys against PostgreSQL, remembering good ones for `cache_seconds`."""

    def __init__(self, pool: asyncpg.Pool[Any], cache_seconds: float) -> None:
        self._pool = pool
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[Principal, float]] = {}

    async def verify(self, authorization: str | None) -> Principal:
        key = _bearer_key(authorization)
        digest = _hash(key)
        now = time.monotonic()
        remembered = self._remembered(digest, now)
        if remembered is not None:
            return remembered
        prefix = _split(key)
        if prefix is None:
            raise Unauthorized("the API key is not valid")
        row = await self._pool.fetchrow(
            """
            SELECT id::text, secret_hash, role, organization_id::text
            FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL
            """,
            prefix,
        )
        if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), digest):
            raise Unauthorized("the API key is not valid")
        principal = Principal(
            key_id=row["id"], role=row["role"], organization_id=row["organization_id"]
        )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[digest] = (principal, now + self._cache_seconds)
        return principal

    def remembered(self, authorization: str) -> Principal | None:
        """The caller of a key verified within the last `cache_seconds`, from memory alone;
        None for any other header (`verify` then decides)."""
        try:
            key = _bearer_key(authorization)
        except Unauthorized:
            return None
        return self._remembered(_hash(key), time.monotonic())

    def _remembered(self, digest: bytes, now: float) -> Principal | None:
        cached = self._cache.get(digest)
        return cached[0] if cached is not None and cached[1] > now else None

    def forget(self) -> None:
        """Drop every remembered key (after a revocation on this replica)."""
        self._cache.clear()


async def authenticate(request: Request[Any, Any, Any]) -> Principal:
    verifier: KeyVerifier = request.app.state.registry.keys
    principal = await verifier.verify(request.headers.get("authorization"))
    request.scope.setdefault("state", {})["key_id"] = principal.key_id
    return principal


# Handlers take `admin: Admin`; the app provides it with `authenticate`.
Admin = NamedDependency[SkipValidation[Principal]]
