"""The secret store interface both backends implement, and the records tool-vault keeps in it.

A store is a versioned key-value map of small JSON documents. Every write is check-and-set
against the version the writer read (0 = "must not exist yet"), so two replicas refreshing the
same OAuth token cannot clobber each other's rotated refresh token.

Paths: `orgs/<org_id>/tools/<agent_tool_id>` for an agent tool's credentials,
`oauth-states/<sha256 of state>` for a pending OAuth authorization.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal, Protocol

import msgspec


class StoreError(Exception):
    """The backend could not be reached or refused the operation (no secret in the message)."""


class VersionConflict(StoreError):
    """Check-and-set failed: someone wrote a newer version since it was read."""


class Versioned(msgspec.Struct, frozen=True, kw_only=True):
    value: bytes
    version: int


class SecretStore(Protocol):
    """Implemented by `EmbeddedStore` (PostgreSQL) and `VaultStore` (HashiCorp Vault KV v2)."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...

    async def read(self, path: str) -> Versioned | None:
        """The current version, or None if the path has no (undeleted) value."""
        ...

    async def write(self, path: str, value: bytes, *, cas: int) -> int:
        """Write `value` if the current version is `cas` (0: if none); the new version.

        Raises VersionConflict otherwise."""
        ...

    async def delete(self, path: str) -> None:
        """Remove the path and all its versions (idempotent)."""
        ...


class ReleaseReadCache:
    """A secret store whose release-path reads (`cached=True`) may come from memory.

    Without it every release reads the backend once per tool: hvac costs ~1 ms of CPU per Vault
    request, PostgreSQL a round trip plus unwrapping a data key, and a busy tool-vault spends most
    of its time there. A cached value is at most `seconds` old, so another replica's write shows
    up within `seconds` (an access token is refreshed 5 minutes before it expires, so a cached one
    is still valid); this replica's own writes and deletes update it at once. Everything that
    writes with check-and-set reads uncached. `seconds=0` turns it off."""

    def __init__(
        self,
        backend: SecretStore,
        seconds: float,
        *,
        entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self.name = backend.name
        self._seconds = seconds
        self._entries = entries
        self._clock = clock
        self._cache: dict[str, tuple[float, Versioned | None]] = {}

    async def start(self) -> None:
        await self._backend.start()

    async def close(self) -> None:
        await self._backend.close()

    async def ready(self) -> bool:
        return await self._backend.ready()

    async def read(self, path: str, *, cached: bool = False) -> Versioned | None:
        if cached:
            hit = self._cache.get(path)
            if hit is not None and hit[0] > self._clock():
                return hit[1]
        found = await self._backend.read(path)
        self._remember(path, found)
        return found

    async def write(self, path: str, value: bytes, *, cas: int) -> int:
        try:
            version = await self._backend.write(path, value, cas=cas)
        except StoreError:
            # A conflict means another writer moved on; an outage leaves the outcome unknown.
            self._cache.pop(path, None)
            raise
        self._remember(path, Versioned(value=value, version=version))
        return version

    async def delete(self, path: str) -> None:
        self._cache.pop(path, None)
        await self._backend.delete(path)

    def _remember(self, path: str, value: Versioned | None) -> None:
        if self._seconds <= 0:
            return
        now = self._clock()
        if len(self._cache) >= self._entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= self._entries:
                self._cache.pop(next(iter(self._cache)))
        self._cache[path] = (now + self._seconds, value)


def tool_path(org_id: str, agent_tool_id: str) -> str:
    return f"orgs/{_segment(org_id, 'org_id')}/tools/{_segment(agent_tool_id, 'agent_tool_id')}"


def state_path(state_digest: str) -> str:
    return f"oauth-states/{_segment(state_digest, 'state')}"


def _segment(value: str, name: str) -> str:
    # Ids become path segments in Vault: refuse anything that could climb or split a path.
    if not value or any(c in value for c in "/\\?#%") or value in (".", ".."):
        raise ValueError(f"{name} is not a valid id")
    return value


class ToolSecret(msgspec.Struct, frozen=True, kw_only=True):
    """What is stored for one agent tool. Never logged, never in an event."""

    kind: Literal["oauth2", "api_key"]
    org_id: str
    agent_id: str
    agent_tool_id: str
    provider: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type name, not a secret
    expires_at: datetime | None = None
    scopes: list[str] = []
    secrets: dict[str, str] = {}
    updated_at: datetime | None = None

    def __repr__(self) -> str:
        return f"ToolSecret(kind={self.kind!r}, agent_tool_id={self.agent_tool_id!r})"


class PendingAuthorization(msgspec.Struct, frozen=True, kw_only=True):
    """An OAuth authorization in flight, keyed by the state's digest; single use."""

    org_id: str
    agent_id: str
    agent_tool_id: str
    tool_name: str
    provider: str
    scopes: list[str]
    code_verifier: str
    redirect_uri: str
    return_url: str | None = None
    expires_at: datetime
    consumed: bool = False

    def __repr__(self) -> str:
        return f"PendingAuthorization(agent_tool_id={self.agent_tool_id!r})"
