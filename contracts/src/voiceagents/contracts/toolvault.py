"""Credential release (`toolvault.v1.release`), OAuth start, and tool-vault's audit events.

Release: a voice worker sends the call grant, an ephemeral X25519 public key and the agent tool
ids it wants; tool-vault answers with the credentials sealed to that key (libsodium sealed box of
the JSON-encoded ReleasedCredentials), or a typed error that carries no secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

RELEASE_SUBJECT = "toolvault.v1.release"
OAUTH_START_SUBJECT = "toolvault.v1.oauth.start"
TOOLVAULT_STREAM = "TOOLVAULT"
TOOLVAULT_EVENTS_SUBJECTS = "toolvault.v1.events.>"
CONNECTED_SUBJECT = "toolvault.v1.events.connected"
REFRESHED_SUBJECT = "toolvault.v1.events.refreshed"
REFRESH_FAILED_SUBJECT = "toolvault.v1.events.refresh_failed"
RELEASED_SUBJECT = "toolvault.v1.events.released"

ReleaseErrorCode = Literal[
    "grant_invalid",
    "grant_expired",
    "call_ended",
    "not_bound",
    "not_connected",
    "refresh_failed",
    "bad_request",
    "unavailable",
]


class ReleaseError(msgspec.Struct, frozen=True, kw_only=True):
    code: ReleaseErrorCode
    message: str
    # Set when the error concerns one tool rather than the whole request.
    agent_tool_id: str | None = None


class CredentialReleaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    grant: str
    # Base64 (standard) of the worker's ephemeral X25519 public key for this call.
    worker_public_key: str
    agent_tool_ids: list[str]


class CredentialReleaseReply(msgspec.Struct, frozen=True, kw_only=True):
    # Base64 of the sealed box; None when `error` is set.
    sealed_credentials: str | None = None
    # A whole-request failure (bad grant, ended call...).
    error: ReleaseError | None = None
    # Per-tool failures; the other tools' credentials are still in the sealed box.
    tool_errors: list[ReleaseError] = []


CredentialKind = Literal["oauth2", "api_key", "none"]


class ToolCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """One agent tool's secrets. Exists in clear only inside tool-vault and in a worker's memory
    for the length of one call."""

    agent_tool_id: str
    kind: CredentialKind
    access_token: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type name, not a secret
    expires_at: datetime | None = None
    secrets: dict[str, str] = {}


class ReleasedCredentials(msgspec.Struct, frozen=True, kw_only=True):
    credentials: list[ToolCredentials] = []


class OAuthStartRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The registry, having checked the admin and the agent tool's org, asks for an auth URL."""

    org_id: str
    agent_id: str
    agent_tool_id: str
    tool_name: str
    provider: str
    scopes: list[str]
    # Where tool-vault sends the admin's browser after the callback (registry UI or API).
    return_url: str | None = None


class OAuthStartReply(msgspec.Struct, frozen=True, kw_only=True):
    authorization_url: str | None = None
    error: str | None = None


AuditOutcome = Literal["ok", "denied", "failed"]


class ToolVaultEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Audit event: who, which call, which agent tool, outcome. Never secret content."""

    event_id: str
    org_id: str
    agent_tool_id: str | None = None
    at: datetime


class CredentialConnected(ToolVaultEvent, frozen=True, kw_only=True, tag="connected"):
    agent_id: str
    provider: str
    scopes: list[str] = []


class CredentialRefreshed(ToolVaultEvent, frozen=True, kw_only=True, tag="refreshed"):
    agent_id: str
    provider: str


class CredentialRefreshFailed(ToolVaultEvent, frozen=True, kw_only=True, tag="refresh_failed"):
    agent_id: str
    provider: str
    reason: str


class CredentialsReleased(ToolVaultEvent, frozen=True, kw_only=True, tag="released"):
    agent_id: str | None = None
    call_sid: str | None = None
    requester: str = "worker"
    agent_tool_ids: list[str] = []
    outcome: AuditOutcome
    error_code: ReleaseErrorCode | None = None


AnyToolVaultEvent = (
    CredentialConnected | CredentialRefreshed | CredentialRefreshFailed | CredentialsReleased
)


SECRETS_PUT_SUBJECT = "toolvault.v1.secrets.put"


class SecretsPutRequest(msgspec.Struct, frozen=True, kw_only=True):
    """API-key style secrets (CRM token, shop key, SMTP password) for one agent tool.

    The registry, having checked the admin and the agent tool's org, forwards the admin's values
    here (core NATS request/reply, never JetStream) without storing or logging them; tool-vault
    stores them and answers with no secret. The whole set is replaced."""

    org_id: str
    agent_id: str
    agent_tool_id: str
    tool_name: str
    secrets: dict[str, str]
    # Who asked (admin user id), for the audit event.
    actor: str | None = None

    def __repr__(self) -> str:  # a stray log of this message must not print the values
        return (
            f"SecretsPutRequest(agent_tool_id={self.agent_tool_id!r}, keys={sorted(self.secrets)})"
        )


class SecretsPutReply(msgspec.Struct, frozen=True, kw_only=True):
    # The stored version (monotonic per agent tool); None when `error` is set.
    version: int | None = None
    error: str | None = None
