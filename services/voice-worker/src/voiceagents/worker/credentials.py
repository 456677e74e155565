"""Getting a call's tool credentials from tool-vault (`toolvault.v1.release`).

The worker makes a fresh X25519 key pair for every call and sends only the public half with
the call grant; tool-vault seals the credentials to it. The private key and the opened
credentials live in this call's memory and nowhere else — never in a log, an event or an error.
A tool whose credentials did not come back is marked unavailable with tool-vault's reason; the
call goes on without it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import msgspec
import structlog
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox
from nats.aio.client import Client
from nats.errors import Error as NatsError

from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.toolvault import (
    RELEASE_SUBJECT,
    CredentialReleaseReply,
    CredentialReleaseRequest,
    ReleasedCredentials,
    ToolCredentials,
)

log = structlog.get_logger("voiceagents.worker.credentials")


@dataclass
class CallCredentials:
    """Credentials by agent tool id, and the tools that got none (with tool-vault's reason)."""

    credentials: dict[str, ToolCredentials] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # a stray log of this object must not print a token
        return f"CallCredentials(tools={sorted(self.credentials)}, unavailable={self.unavailable})"


async def release_credentials(
    nc: Client, grant: str, agent_tool_ids: list[str], *, timeout: float
) -> CallCredentials:
    """Ask tool-vault for these tools' credentials; never raises for tool-vault's failures."""
    if not agent_tool_ids:
        return CallCredentials()
    private_key = PrivateKey.generate()
    request = CredentialReleaseRequest(
        grant=grant,
        worker_public_key=base64.b64encode(bytes(private_key.public_key)).decode(),
        agent_tool_ids=agent_tool_ids,
    )
    try:
        message = await nc.request(RELEASE_SUBJECT, encode(request), timeout=timeout)
        reply = decode(message.data, CredentialReleaseReply)
    except (NatsError, TimeoutError, msgspec.ValidationError) as exc:
        log.warning("tool-vault unreachable", error=type(exc).__name__, tools=agent_tool_ids)
        return _none_released(agent_tool_ids, "unavailable")
    if reply.error is not None:
        log.warning("credential release refused", code=reply.error.code, tools=agent_tool_ids)
        return _none_released(agent_tool_ids, reply.error.code)

    unavailable: dict[str, str] = {
        e.agent_tool_id: e.code for e in reply.tool_errors if e.agent_tool_id
    }
    released: dict[str, ToolCredentials] = {}
    if reply.sealed_credentials:
        try:
            opened = SealedBox(private_key).decrypt(base64.b64decode(reply.sealed_credentials))
            released = {c.agent_tool_id: c for c in decode(opened, ReleasedCredentials).credentials}
        except (CryptoError, ValueError, msgspec.ValidationError) as exc:
            log.warning("sealed credentials unreadable", error=type(exc).__name__)
            return _none_released(agent_tool_ids, "unavailable")
    for tool_id in agent_tool_ids:
        if tool_id not in released and tool_id not in unavailable:
            unavailable[tool_id] = "unavailable"
    if unavailable:
        log.warning("some tools have no credentials", unavailable=unavailable)
    return CallCredentials(
        credentials={k: v for k, v in released.items() if k in agent_tool_ids},
        unavailable=unavailable,
    )


def _none_released(agent_tool_ids: list[str], code: str) -> CallCredentials:
    return CallCredentials(unavailable=dict.fromkeys(agent_tool_ids, code))
