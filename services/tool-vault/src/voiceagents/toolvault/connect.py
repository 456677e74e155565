"""Connecting a tool, on the registry's behalf (the registry has checked the admin and that the
agent tool is in the admin's org; only the registry's NATS user may publish these subjects):

- `toolvault.v1.oauth.start` → the provider's authorization URL (see oauth.py);
- `toolvault.v1.secrets.put` → store API-key style secrets (CRM token, shop key, SMTP password).
  The registry forwards the admin's values over core NATS request/reply without storing them, so
  they never touch the registry's database; the reply carries the stored version, never a value.

Both answer errors with a message naming the bad field, and no secret.
"""

from __future__ import annotations

import msgspec
import structlog

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.toolvault import (
    CredentialConnected,
    OAuthStartReply,
    OAuthStartRequest,
    SecretsPutReply,
    SecretsPutRequest,
)
from voiceagents.toolvault.events import AuditPublisher, new_event_id, now
from voiceagents.toolvault.oauth import OAuthFlows
from voiceagents.toolvault.store import (
    SecretStore,
    StoreError,
    ToolSecret,
    VersionConflict,
    tool_path,
)

log = structlog.get_logger("voiceagents.toolvault.connect")

MAX_SECRETS = 32
MAX_SECRET_BYTES = 8192


class ConnectService:
    def __init__(self, store: SecretStore, oauth: OAuthFlows, audit: AuditPublisher) -> None:
        self._store = store
        self._oauth = oauth
        self._audit = audit

    async def oauth_start(self, data: bytes) -> bytes:
        try:
            request = decode(data, OAuthStartRequest)
            url = await self._oauth.start(request)
        except msgspec.ValidationError as exc:
            return encode(OAuthStartReply(error=f"invalid oauth start request: {exc}"))
        except ValueError as exc:
            return encode(OAuthStartReply(error=str(exc)))
        except StoreError as exc:
            log.warning("oauth start failed", error=str(exc))
            return encode(OAuthStartReply(error="the secret store is unavailable; try again"))
        log.info(
            "oauth started",
            org_id=request.org_id,
            agent_tool_id=request.agent_tool_id,
            provider=request.provider,
        )
        return encode(OAuthStartReply(authorization_url=url))

    async def secrets_put(self, data: bytes) -> bytes:
        try:
            request = decode(data, SecretsPutRequest)
            path = tool_path(request.org_id, request.agent_tool_id)
            _check_secrets(request.secrets)
            if not request.agent_id:
                raise ValueError("agent_id: must be set")
        except msgspec.ValidationError as exc:
            # msgspec's message names the field, never echoes the value.
            return encode(SecretsPutReply(error=f"invalid secrets request: {exc}"))
        except ValueError as exc:
            return encode(SecretsPutReply(error=str(exc)))
        secret = ToolSecret(
            kind="api_key",
            org_id=request.org_id,
            agent_id=request.agent_id,
            agent_tool_id=request.agent_tool_id,
            provider="api_key",
            secrets=request.secrets,
            updated_at=now(),
        )
        try:
            version = await self._replace(path, secret)
        except StoreError as exc:
            log.warning("secrets put failed", agent_tool_id=request.agent_tool_id, error=str(exc))
            return encode(SecretsPutReply(error="the secret store is unavailable; try again"))
        self._audit.publish(
            CredentialConnected(
                event_id=new_event_id(),
                org_id=request.org_id,
                agent_tool_id=request.agent_tool_id,
                at=now(),
                agent_id=request.agent_id,
                provider="api_key",
            )
        )
        log.info(
            "api-key secrets stored",
            org_id=request.org_id,
            agent_tool_id=request.agent_tool_id,
            keys=sorted(request.secrets),
            actor=request.actor,
            version=version,
        )
        return encode(SecretsPutReply(version=version))

    async def _replace(self, path: str, secret: ToolSecret) -> int:
        for _ in range(5):
            current = await self._store.read(path)
            try:
                return await self._store.write(
                    path, encode(secret), cas=0 if current is None else current.version
                )
            except VersionConflict:
                continue
        raise StoreError("the tool's secrets kept changing")


def _check_secrets(values: dict[str, str]) -> None:
    if not values:
        raise ValueError("secrets: give at least one name and value")
    if len(values) > MAX_SECRETS:
        raise ValueError(f"secrets: at most {MAX_SECRETS} values")
    for name, value in values.items():
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError("secrets: names are 1-64 letters, digits, '_' or '-'")
        if not value or len(value.encode()) > MAX_SECRET_BYTES:
            raise ValueError(f"secrets.{name}: must be 1 to {MAX_SECRET_BYTES} bytes")
