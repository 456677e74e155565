"""OAuth for agent tools, seen from the registry: start the consent, follow its outcome.

`GET /api/v1/tools/auth/{tool_name}?agent_tool_id=...` checks the admin and the agent tool's
organization, asks tool-vault for the authorization URL (`toolvault.v1.oauth.start`; tool-vault
holds the state, PKCE verifier and, later, the tokens) and redirects the browser there. The
registry never sees a token. tool-vault's events (`TOOLVAULT` stream) then set the agent tool's
`auth_status`: connected/refreshed -> connected, refresh_failed -> expired.
"""

from __future__ import annotations

from typing import Any, TypeVar

import asyncpg
import msgspec
import structlog
from litestar import Request, Response, get
from litestar.params import FromPath, FromQuery
from litestar.status_codes import HTTP_302_FOUND
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from voiceagents.contracts.codec import decode, decode_union, encode
from voiceagents.contracts.tools import PlatformToolSpec
from voiceagents.contracts.toolvault import (
    OAUTH_START_SUBJECT,
    AnyToolVaultEvent,
    CredentialConnected,
    CredentialRefreshed,
    CredentialRefreshFailed,
    OAuthStartReply,
    OAuthStartRequest,
)
from voiceagents.registry import outbox
from voiceagents.registry.auth import Admin
from voiceagents.registry.consumers import retry_later
from voiceagents.registry.ids import parse_id
from voiceagents.registry.metrics import RegistryMetrics
from voiceagents.registry.problems import Invalid, NotFound, Unavailable
from voiceagents.registry.runtime import registry_of
from voiceagents.registry.tools import spec_from_row

log = structlog.get_logger("voiceagents.registry.oauth")

AUTH_STATUS_DURABLE = "registry-auth-status"
_TOOLVAULT_TIMEOUT = 5.0

ReplyT = TypeVar("ReplyT")


async def connectable_tool(
    request: Request[Any, Any, Any], admin: Admin, agent_tool_id: str, tool_name: str
) -> tuple[asyncpg.Record, PlatformToolSpec]:
    """The agent tool (in the admin's scope, of a live agent) and its tool's spec; 404 when the
    admin may not see it, 422 when it is a binding of another tool."""
    agent_tool_id = parse_id(agent_tool_id, "agent tool", "agent_tool_id")
    row = await registry_of(request).pool.fetchrow(
        """
        SELECT t.id::text, t.agent_id::text, t.organization_id::text, t.tool_name,
            t.unselected_functions, p.spec
        FROM agent_tools t
        JOIN platform_tools p ON p.name = t.tool_name
        JOIN agents a ON a.id = t.agent_id AND a.deleted_at IS NULL
        WHERE t.id = $1 AND ($2::uuid IS NULL OR t.organization_id = $2::uuid)
        """,
        agent_tool_id,
        admin.scope(),
    )
    if row is None:
        raise NotFound(f"agent tool {agent_tool_id} not found", field="agent_tool_id")
    if row["tool_name"] != tool_name:
        raise Invalid(
            f"agent tool {agent_tool_id} is a {row['tool_name']} tool, not {tool_name}",
            field="tool_name",
        )
    return row, spec_from_row(row)


async def ask_toolvault(
    request: Request[Any, Any, Any], subject: str, payload: bytes, reply_type: type[ReplyT]
) -> ReplyT:
    """One request/reply to tool-vault; 503 when it cannot be reached (not the admin's mistake;
    try again)."""
    nc = registry_of(request).nats
    if nc is None or not nc.is_connected:
        raise Unavailable("tool-vault cannot be reached (no NATS connection); try again")
    try:
        message = await nc.request(subject, payload, timeout=_TOOLVAULT_TIMEOUT)
        return decode(message.data, reply_type)
    except (NoRespondersError, NatsTimeoutError):
        raise Unavailable("tool-vault did not answer; try again") from None
    except msgspec.DecodeError:
        raise Unavailable("tool-vault answered something unreadable") from None


@get("/api/v1/tools/auth/{tool_name:str}", tags=["tools"])
async def start_oauth(
    request: Request[Any, Any, Any],
    admin: Admin,
    tool_name: FromPath[str],
    agent_tool_id: FromQuery[str],
    return_url: FromQuery[str | None] = None,
) -> Response[None]:
    """Redirect (302) to the provider's consent page for this agent tool. 503 when tool-vault
    cannot be reached (not the caller's mistake; try again)."""
    row, spec = await connectable_tool(request, admin, agent_tool_id, tool_name)
    if spec.auth_type != "oauth2":
        raise Invalid(
            f"{tool_name} does not use OAuth (auth_type {spec.auth_type})", field="tool_name"
        )
    unselected = set(row["unselected_functions"])
    scopes = sorted(
        {
            scope
            for function in spec.functions
            if function.name not in unselected
            for scope in function.oauth_scopes
        }
    )
    start = OAuthStartRequest(
        org_id=row["organization_id"],
        agent_id=row["agent_id"],
        agent_tool_id=row["id"],
        tool_name=tool_name,
        provider=spec.oauth_provider or tool_name,
        scopes=scopes,
        return_url=return_url or registry_of(request).settings.oauth_return_url,
    )
    reply = await ask_toolvault(request, OAUTH_START_SUBJECT, encode(start), OAuthStartReply)
    if reply.error is not None or not reply.authorization_url:
        raise Invalid(
            f"tool-vault refused: {reply.error or 'no authorization URL'}", field="tool_name"
        )
    return Response(None, status_code=HTTP_302_FOUND, headers={"Location": reply.authorization_url})


_STATUS_BY_EVENT: dict[type, str] = {
    CredentialConnected: "connected",
    CredentialRefreshed: "connected",
    CredentialRefreshFailed: "expired",
}


class AuthStatusConsumer:
    """Follows tool-vault's events and keeps each agent tool's `auth_status` current."""

    def __init__(self, pool: asyncpg.Pool[Any], metrics: RegistryMetrics) -> None:
        self._pool = pool
        self._metrics = metrics

    async def handle(self, msg: Msg) -> None:
        try:
            event = decode_union(msg.data, AnyToolVaultEvent)
        except msgspec.DecodeError as exc:
            log.error("unreadable tool-vault event", subject=msg.subject, error=str(exc))
            await msg.term()
            return
        status = _STATUS_BY_EVENT.get(type(event))
        self._metrics.toolvault_events.labels(str(type(event).__struct_config__.tag)).inc()
        if status is None or event.agent_tool_id is None:
            await msg.ack()  # audit events (released) say nothing about the connection
            return
        try:
            await self._apply(event.agent_tool_id, status, event.event_id)
        # Not stored: retried, or dead-lettered when it is the message's own fault.
        except Exception as exc:
            if await retry_later(msg, exc):
                log.warning("auth status not stored; will retry", error=str(exc))
            else:
                log.error("auth status cannot be stored; dead-lettered", error=str(exc))
            return
        await msg.ack()

    async def _apply(self, agent_tool_id: str, status: str, event_id: str) -> None:
        try:
            agent_tool_id = parse_id(agent_tool_id, "agent tool")
        except NotFound:
            return
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                """
                UPDATE agent_tools SET auth_status = $2, version = version + 1, updated_at = now()
                WHERE id = $1 AND auth_status <> $2
                RETURNING organization_id::text, agent_id::text, version
                """,
                agent_tool_id,
                status,
            )
            if row is None:
                return  # unknown tool or already in that state (a redelivery)
            await outbox.record(
                connection,
                entity="agent_tool",
                action="updated",
                entity_id=agent_tool_id,
                org_id=row["organization_id"],
                agent_id=row["agent_id"],
                version=row["version"],
                actor=f"tool-vault:{event_id}",
            )
