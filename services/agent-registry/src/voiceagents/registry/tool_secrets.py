"""API-key secrets of agent tools (CRM token, shop key, SMTP password), set by an admin.

`PUT /api/v1/tools/agent/{agent_tool_id}/secrets` checks the admin and the agent tool's
organization, then forwards the values to tool-vault (`toolvault.v1.secrets.put`, core NATS
request/reply) without storing or logging them: they never reach the registry's database, a
stream or a response. tool-vault's "connected" event then sets the tool's `auth_status`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, put
from litestar.params import FromPath, JSONBody

from voiceagents.contracts.codec import encode
from voiceagents.contracts.toolvault import (
    SECRETS_PUT_SUBJECT,
    SecretsPutReply,
    SecretsPutRequest,
)
from voiceagents.registry.auth import Admin
from voiceagents.registry.oauth import ask_toolvault, connectable_tool
from voiceagents.registry.problems import Invalid

log = structlog.get_logger("voiceagents.registry.tool_secrets")


class ToolSecretsPut(msgspec.Struct, forbid_unknown_fields=True):
    # Values are write-only: what is stored is never read back through this API.
    secrets: dict[str, str]
    tool_name: str


class ToolSecretsStored(msgspec.Struct):
    agent_tool_id: str
    secret_names: list[str]
    version: int


@put("/api/v1/tools/agent/{agent_tool_id:str}/secrets", tags=["tools"])
async def put_tool_secrets(
    request: Request[Any, Any, Any],
    admin: Admin,
    agent_tool_id: FromPath[str],
    data: JSONBody[ToolSecretsPut],
) -> ToolSecretsStored:
    """Replace the API-key secrets of one agent tool (the whole set). The answer names what is
    stored, never a value. 503 when tool-vault cannot be reached."""
    row, spec = await connectable_tool(request, admin, agent_tool_id, data.tool_name)
    if spec.auth_type != "api_key":
        raise Invalid(
            f"{data.tool_name} takes no API-key secrets (auth_type {spec.auth_type})",
            field="tool_name",
        )
    if not data.secrets:
        raise Invalid("at least one secret is needed", field="secrets")
    forwarded = SecretsPutRequest(
        org_id=row["organization_id"],
        agent_id=row["agent_id"],
        agent_tool_id=row["id"],
        tool_name=data.tool_name,
        secrets=data.secrets,
        actor=admin.key_id,
    )
    reply = await ask_toolvault(request, SECRETS_PUT_SUBJECT, encode(forwarded), SecretsPutReply)
    if reply.error is not None or reply.version is None:
        # tool-vault's errors name the field and carry no value.
        raise Invalid(f"tool-vault refused: {reply.error or 'no version'}", field="secrets")
    log.info(
        "tool secrets forwarded",
        agent_tool_id=row["id"],
        names=sorted(data.secrets),
        version=reply.version,
    )
    return ToolSecretsStored(
        agent_tool_id=row["id"], secret_names=sorted(data.secrets), version=reply.version
    )
