"""LiveKit's webhooks: a call whose voice agent vanished is logged as failed and its room closed.

A voice worker that dies mid-call (SIGKILL, OOM) publishes nothing and deletes nothing: the
caller would sit in a silent room until Twilio's time limit. LiveKit tells us instead: its
`participant_left` webhook for the agent participant of a `call_` room starts a short grace
period (a replacement agent may join, the call may be ending anyway), then the gateway looks at
the room. Still there, no agent in it, and either a caller in it or the agent left abnormally →
`calls.v1.failed` (`reason = agent_lost`) and the room is deleted, which hangs up the SIP leg.

Webhooks are verified with livekit-api's `WebhookReceiver` (a JWT signed with the LiveKit API
secret whose `sha256` claim covers the body); anything else gets 401 and causes no work.
Multi-replica safe: whichever replica receives the webhook acts, and every action is idempotent
(the event id is `<CallSid>.failed`, deduplicated by JetStream; deleting a gone room is a no-op).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import structlog
from livekit import api
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from voiceagents.contracts.calls import CallContext, CallFailed
from voiceagents.contracts.codec import decode
from voiceagents.gateway.callstate import CallBook
from voiceagents.gateway.events import EventPublisher, event_id
from voiceagents.gateway.metrics import GatewayMetrics
from voiceagents.gateway.rooms import CallRooms

log = structlog.get_logger("voiceagents.gateway.agentloss")

LIVEKIT_WEBHOOK_PATH = "/api/v1/livekit/webhook"
CALL_ROOM_PREFIX = "call_"
AGENT_LOST_REASON = "agent_lost"

_AGENT = models.ParticipantInfo.Kind.AGENT
# The agent said goodbye itself; anything else (signal closed, timeout...) is a crash or a cut.
_CLEAN_LEAVE = models.DisconnectReason.CLIENT_INITIATED
# Someone is closing the room on purpose (the call's end): nothing to check.
_ROOM_CLOSING = frozenset(
    {models.DisconnectReason.ROOM_DELETED, models.DisconnectReason.ROOM_CLOSED}
)


class LiveKitWebhookVerifier:
    """Checks LiveKit's `Authorization` JWT (API key/secret) and the body hash it carries."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self._receiver = api.WebhookReceiver(api.TokenVerifier(api_key, api_secret))

    def verify(self, body: bytes, authorization: str | None) -> WebhookEvent | None:
        """The event if LiveKit signed exactly this body, else None."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        try:
            return self._receiver.receive(body.decode("utf-8"), token)
        except Exception:  # bad token, wrong hash or bad JSON: all mean "not from LiveKit"
            return None


class AgentLossWatch:
    """Turns an agent's departure from a call room into a failed call when nobody replaces it."""

    def __init__(
        self,
        *,
        rooms: CallRooms,
        book: CallBook,
        events: EventPublisher,
        metrics: GatewayMetrics,
        grace_seconds: float,
    ) -> None:
        self._rooms = rooms
        self._book = book
        self._events = events
        self._metrics = metrics
        self._grace = grace_seconds
        # One check per room at a time on this replica (a webhook delivered twice, two agents).
        self._checks: dict[str, asyncio.Task[None]] = {}

    def receive(self, event: WebhookEvent) -> str:
        """Act on one verified webhook; returns the outcome label for metrics."""
        room = event.room.name
        if (
            event.event != "participant_left"
            or event.participant.kind != _AGENT
            or not room.startswith(CALL_ROOM_PREFIX)
        ):
            return "ignored"
        reason = event.participant.disconnect_reason
        if reason in _ROOM_CLOSING:
            return "room_closed"
        if room in self._checks:
            return "duplicate"
        log.info(
            "agent left a call room",
            call_sid=room.removeprefix(CALL_ROOM_PREFIX),
            room=room,
            disconnect_reason=models.DisconnectReason.Name(reason),
        )
        task = asyncio.create_task(
            self._check(room, event.room.metadata, clean_leave=reason == _CLEAN_LEAVE)
        )
        self._checks[room] = task
        task.add_done_callback(lambda _: self._checks.pop(room, None))
        return "agent_left"

    async def _check(self, room: str, metadata: str, *, clean_leave: bool) -> None:
        call_sid = room.removeprefix(CALL_ROOM_PREFIX)
        await asyncio.sleep(self._grace)
        record = self._book.get(call_sid)
        if record is not None and record.ended:
            return  # Twilio already said the call is over; that end is the call's record.
        try:
            participants = await self._rooms.participants(room)
        except Exception as exc:  # LiveKit unreachable: its empty/departure timeouts still apply
            log.warning("agent loss not checked", call_sid=call_sid, error=type(exc).__name__)
            return
        if participants is None:
            return  # the room is gone: the call ended normally
        if any(p.kind == _AGENT for p in participants):
            return  # another agent took over
        callers = [p for p in participants if p.kind != _AGENT]
        if not callers and clean_leave:
            # The worker finished after the caller left; the departure timeout closes the room.
            return
        context = self._context(call_sid, metadata)
        self._metrics.agents_lost.inc()
        log.error(
            "voice agent lost mid-call; failing the call and closing its room",
            call_sid=call_sid,
            room=room,
            callers_left=len(callers),
        )
        if context is not None:
            # Twilio's `ended` follows the room's deletion; in whichever order the call log gets
            # the two, the call stays failed (`failed` sets the status, `ended` only changes a
            # call still in progress).
            self._events.publish(
                CallFailed(
                    event_id=event_id(call_sid, "failed"),
                    call_sid=call_sid,
                    org_id=context.org_id,
                    agent_id=context.agent_id,
                    at=datetime.now(UTC),
                    reason=AGENT_LOST_REASON,
                )
            )
        else:
            log.error("call room without a call context; no failed event", call_sid=call_sid)
        try:
            await self._rooms.delete(room)
        except Exception as exc:  # the caller's Twilio time limit still ends the call
            log.error(
                "room of a lost call not deleted", call_sid=call_sid, error=type(exc).__name__
            )

    def _context(self, call_sid: str, metadata: str) -> CallContext | None:
        """The call context the gateway put in the room's metadata (any replica created it),
        else this replica's own record of the call."""
        if metadata:
            try:
                return decode(metadata, CallContext)
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass
        record = self._book.get(call_sid)
        return record.context if record is not None else None

    async def drain(self, timeout: float) -> None:
        """Give running checks `timeout` seconds, then drop them (on shutdown)."""
        if not self._checks:
            return
        _, pending = await asyncio.wait(set(self._checks.values()), timeout=timeout)
        for task in pending:
            task.cancel()
