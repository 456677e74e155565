"""A call's context, the call grant, and call events on the `CALLS` stream (`calls.v1.<kind>`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

CALLS_STREAM = "CALLS"
CALLS_SUBJECTS = "calls.v1.>"
CALL_STARTED_SUBJECT = "calls.v1.started"
CALL_AGENT_JOINED_SUBJECT = "calls.v1.agent_joined"
CALL_TOOL_INVOKED_SUBJECT = "calls.v1.tool_invoked"
CALL_TRANSCRIPT_SUBJECT = "calls.v1.transcript"
CALL_TRANSFERRED_SUBJECT = "calls.v1.transferred"
CALL_ENDED_SUBJECT = "calls.v1.ended"
CALL_FAILED_SUBJECT = "calls.v1.failed"

# Who accepts a call grant: tool-vault (the call's credentials) and the registry (the
# knowledge-base search of the call's organization). Each checks that it is in `aud`.
TOOLVAULT_AUDIENCE = "tool-vault"
REGISTRY_AUDIENCE = "registry"


def room_name(call_sid: str) -> str:
    """LiveKit room of a call. LiveKit SIP's callee dispatch rule with prefix `call` builds the
    same name from the SIP user part, so the caller lands in the room the gateway created."""
    return f"call_{call_sid}"


class CallContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway knows of a call; no secrets. Travels in room and dispatch metadata."""

    call_sid: str
    room: str
    org_id: str
    agent_id: str
    agent_version: int
    from_number: str
    to_number: str
    started_at: datetime


class CallGrantClaims(msgspec.Struct, frozen=True, kw_only=True):
    """Claims of the call grant: a compact JWS (EdDSA / Ed25519) signed by the gateway, with the
    signing key's id in the `kid` header. tool-vault releases credentials only against it, and
    the registry answers knowledge-base searches only against it (`voiceagents.contracts.grants`
    verifies it for both)."""

    # A list since both services accept it; a single string (grants signed before the registry
    # was an audience) still parses.
    aud: str | list[str] = msgspec.field(
        default_factory=lambda: [TOOLVAULT_AUDIENCE, REGISTRY_AUDIENCE]
    )
    iss: str = "gateway"
    room: str
    call_sid: str
    org_id: str
    agent_id: str
    iat: int
    exp: int
    jti: str


class DispatchMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """Metadata of the explicit agent dispatch the gateway creates for a call."""

    call: CallContext
    grant: str


class CallEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Fields every call event has. `event_id` is also its Nats-Msg-Id (deduplicated)."""

    event_id: str
    call_sid: str
    org_id: str
    agent_id: str
    at: datetime


class CallStarted(CallEvent, frozen=True, kw_only=True, tag="started"):
    room: str
    from_number: str
    to_number: str


class AgentJoined(CallEvent, frozen=True, kw_only=True, tag="agent_joined"):
    worker_id: str
    # Dispatch received -> ready to greet (config, credentials, tools built).
    setup_ms: float


ToolOutcome = Literal["ok", "error", "timeout", "unavailable", "refused"]


class ToolInvoked(CallEvent, frozen=True, kw_only=True, tag="tool_invoked"):
    tool_name: str
    function: str
    # Arguments with the values the tool marks as sensitive replaced by "[redacted]".
    arguments: dict[str, Any] = {}
    outcome: ToolOutcome
    duration_ms: float
    error: str | None = None


class TranscriptEntry(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["agent", "caller"]
    text: str
    at: datetime


class TranscriptTurn(CallEvent, frozen=True, kw_only=True, tag="transcript"):
    entry: TranscriptEntry


class CallTransferred(CallEvent, frozen=True, kw_only=True, tag="transferred"):
    to_number: str
    reason: str = ""
    # "failed": Twilio did not make the transfer and the caller stayed with the agent; `error`
    # is the exception's type (never its text).
    outcome: Literal["ok", "failed"] = "ok"
    error: str = ""


CallStatus = Literal["completed", "failed", "busy", "no_answer", "canceled"]
EndedBy = Literal["caller", "agent", "system", "unknown"]


class CallEnded(CallEvent, frozen=True, kw_only=True, tag="ended"):
    status: CallStatus
    ended_by: EndedBy = "unknown"
    reason: str = ""
    duration_seconds: float | None = None
    # The worker attaches the whole transcript; the gateway's status callback does not know it.
    transcript: list[TranscriptEntry] = []
    source: Literal["gateway", "worker"] = "gateway"


class CallFailed(CallEvent, frozen=True, kw_only=True, tag="failed"):
    reason: str
    source: Literal["gateway", "worker"] = "gateway"


AnyCallEvent = (
    CallStarted
    | AgentJoined
    | ToolInvoked
    | TranscriptTurn
    | CallTransferred
    | CallEnded
    | CallFailed
)

CALL_EVENT_SUBJECTS: dict[type[CallEvent], str] = {
    CallStarted: CALL_STARTED_SUBJECT,
    AgentJoined: CALL_AGENT_JOINED_SUBJECT,
    ToolInvoked: CALL_TOOL_INVOKED_SUBJECT,
    TranscriptTurn: CALL_TRANSCRIPT_SUBJECT,
    CallTransferred: CALL_TRANSFERRED_SUBJECT,
    CallEnded: CALL_ENDED_SUBJECT,
    CallFailed: CALL_FAILED_SUBJECT,
}
