"""The secret store interface both backends implement, and the records tool-vault keeps in it.

A store is a versioned key-value map of small JSON documents. Every write is check-and-set
against the version the writer read (0 = "must not exist yet"), so two replicas refreshing the
same OAuth token cannot clobber each other's rotated refresh token.

Paths: `orgs/<org_id>/tools/<agent_tool_id>` for an agent tool's credentials,
`oauth-states/<sha256 of state>` for a pending OAuth authorization.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal, NamedTuple, Protocol

import msgspec
import structlog

log = structlog.get_logger("voiceagents.toolvault.store")


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


class _Cached(NamedTuple):
    expires_at: float
    refresh_at: float
    value: Versioned | None


class ReleaseReadCache:
    """A secret store whose release-path reads (`cached=True`) may come from memory.

    Without it every release reads the backend once per tool: hvac costs ~1 ms of CPU per Vault
    request, PostgreSQL a round trip plus unwrapping a data key, and a busy tool-vault spends most
    of its time there. A cached value is at most `seconds` old, so another replica's write shows
    up within `seconds` (an access token is refreshed 5 minutes before it expires, so a cached one
    is still valid); this replica's own writes and deletes update it at once. Everything that
    writes with check-and-set reads uncached. `seconds=0` turns it off.

    A value read again after 50-80 % of `seconds` (a random point per entry, so entries cached
    together do not all go back at once) is answered from memory while one background read
    refreshes it: a busy tool's releases never wait for the backend, and the backend sees one
    read per tool per period instead of a burst when a batch expires."""

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
        self._cache: dict[str, _Cached] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        # Bumped by every write and delete: a read that started before one must not cache
        # what it read, which may be older than what was written.
        self._generation = 0

    async def start(self) -> None:
        await self._backend.start()

    async def close(self) -> None:
        for task in self._refreshing.values():
            task.cancel()
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)
        await self._backend.close()

    async def ready(self) -> bool:
        return await self._backend.ready()

    async def read(self, path: str, *, cached: bool = False) -> Versioned | None:
        if cached:
            hit = self._cache.get(path)
            now = self._clock()
            if hit is not None and hit.expires_at > now:
                if hit.refresh_at <= now and path not in self._refreshing:
                    self._refreshing[path] = asyncio.create_task(self._refresh(path))
                return hit.value
        generation = self._generation
        found = await self._backend.read(path)
        self._remember(path, found, generation)
        return found

    async def write(self, path: str, value: bytes, *, cas: int) -> int:
        self._generation += 1
        try:
            version = await self._backend.write(path, value, cas=cas)
        except StoreError:
            # A conflict means another writer moved on; an outage leaves the outcome unknown.
            self._cache.pop(path, None)
            raise
        self._remember(path, Versioned(value=value, version=version), self._generation)
        return version

    async def delete(self, path: str) -> None:
        self._generation += 1
        self._cache.pop(path, None)
        await self._backend.delete(path)

    async def _refresh(self, path: str) -> None:
        generation = self._generation
        try:
            found = await self._backend.read(path)
        except Exception as exc:  # background work reports, never raises
            # The cached value serves until it expires; then releases read (and fail) directly.
            # A StoreError's message carries no secret; anything else is named by its type only.
            error = str(exc) if isinstance(exc, StoreError) else type(exc).__name__
            log.warning("could not refresh a cached secret", backend=self.name, error=error)
        else:
            self._remember(path, found, generation)
        finally:
            del self._refreshing[path]

    def _remember(self, path: str, value: Versioned | None, generation: int) -> None:
        if self._seconds <= 0 or generation != self._generation:
            return
        now = self._clock()
        if len(self._cache) >= self._entries:
            self._cache = {k: v for k, v in self._cache.items() if v.expires_at > now}
            while len(self._cache) >= self._entries:
                self._cache.pop(next(iter(self._cache)))
        refresh_at = now + self._seconds * random.uniform(0.5, 0.8)  # noqa: S311 - not a secret
        self._cache[path] = _Cached(now + self._seconds, refresh_at, value)


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
