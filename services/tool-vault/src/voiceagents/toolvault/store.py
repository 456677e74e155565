"""The secret store interface both backends implement, and the records tool-vault keeps in it.

A store is a versioned key-value map of small JSON documents. Every write is check-and-set
against the version the writer read (0 = "must not exist yet"), so two replicas refreshing the
same OAuth token cannot clobber each other's rotated refresh token.

Paths: `orgs/<org_id>/tools/<agent_tool_id>` for an agent tool's credentials,
`oauth-states/<sha256 of state>` for a pending OAuth authorization.
"""

from __future__ import annotations

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

    async def read(self, path: str, *, cached: bool = False) -> Versioned | None:
        """The current version, or None if the path has no (undeleted) value.

        `cached=True` (the release path only) lets a backend answer from a short-lived cache;
        anything that will write with check-and-set reads uncached."""
        ...

    async def write(self, path: str, value: bytes, *, cas: int) -> int:
        """Write `value` if the current version is `cas` (0: if none); the new version.

        Raises VersionConflict otherwise."""
        ...

    async def delete(self, path: str) -> None:
        """Remove the path and all its versions (idempotent)."""
        ...


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
