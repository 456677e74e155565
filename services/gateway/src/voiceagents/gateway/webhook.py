"""Twilio's voice webhooks: the incoming call, status callbacks, the Dial action and the fallback.

The incoming call's hot path is memory lookups, one Ed25519 signature and one LiveKit request
(CreateRoom with the agent dispatch in it); events go to JetStream after the answer is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import structlog
from multidict import MultiDict

from voiceagents.contracts.calls import (
    CallContext,
    CallEnded,
    CallFailed,
    CallStarted,
    CallStatus,
    room_name,
)
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.gateway import twiml
from voiceagents.gateway.callstate import CallBook, CallRecord
from voiceagents.gateway.events import EventPublisher, event_id
from voiceagents.gateway.grants import GrantSigner
from voiceagents.gateway.metrics import GatewayMetrics
from voiceagents.gateway.rooms import CallRooms
from voiceagents.gateway.settings import Settings

log = structlog.get_logger("voiceagents.gateway")

INCOMING_PATH = "/api/v1/voice/twilio/incoming"
STATUS_PATH = "/api/v1/voice/twilio/status"
DIAL_ACTION_PATH = "/api/v1/voice/twilio/dial-action"
FALLBACK_PATH = "/api/v1/voice/twilio/fallback"

# Twilio's final call statuses, and how the call log names them.
_FINAL_STATUSES: dict[str, CallStatus] = {
    "completed": "completed",
    "answered": "completed",  # a DialCallStatus: the bridge was answered and is now over
    "busy": "busy",
    "failed": "failed",
    "no-answer": "no_answer",
    "canceled": "canceled",
}
# How long a finished or turned-away call is remembered (Twilio retries within seconds).
_DONE_RETENTION_SECONDS = 900.0
_LIVE_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress"})


class MissingParameter(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"missing Twilio parameter {name}")
        self.name = name


def required(params: MultiDict[str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise MissingParameter(name)
    return value


def twilio_time(params: MultiDict[str]) -> datetime:
    """When Twilio says the status changed (its `Timestamp`, RFC 2822), else now."""
    stamp = params.get("Timestamp")
    if stamp:
        try:
            return parsedate_to_datetime(stamp).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)


def duration(params: MultiDict[str], *names: str) -> float | None:
    for name in names:
        value = params.get(name)
        if value:
            try:
                return float(value)
            except ValueError:
                return None
    return None


class CallHandler:
    """Decides each webhook's answer; the HTTP layer (app.py) only checks signatures."""

    def __init__(
        self,
        *,
        settings: Settings,
        mirror: ConfigMirror,
        rooms: CallRooms,
        signer: GrantSigner,
        events: EventPublisher,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._mirror = mirror
        self._rooms = rooms
        self._signer = signer
        self._events = events
        self._metrics = metrics
        self.book = CallBook(
            live_retention_seconds=settings.max_call_seconds + 600,
            done_retention_seconds=_DONE_RETENTION_SECONDS,
        )
        self._action_url = settings.base_url + DIAL_ACTION_PATH
        self._background: set[asyncio.Task[None]] = set()
        self._rejections = {reason: twiml.rejection(reason) for reason in twiml.REJECTIONS}
        self._apology = twiml.apology()

    # -- the incoming call -----------------------------------------------------------------

    async def incoming(self, params: MultiDict[str]) -> tuple[str, str]:
        """The TwiML answer and the outcome label for metrics."""
        call_sid = required(params, "CallSid")
        record = self.book.get(call_sid)
        if record is not None:
            # The same webhook again (Twilio retry, a duplicate): the same answer, no new work.
            return await asyncio.shield(record.answer), "duplicate"
        record = self.book.open(call_sid)
        try:
            answer, outcome = await self._answer(record, params)
        except BaseException as exc:
            # Never leave a waiting duplicate hanging; it gets the apology too.
            record.answer.set_result(self._apology)
            self.book.release(record)
            self.book.settle(record)
            if isinstance(exc, Exception):
                log.exception("incoming call failed", call_sid=call_sid)
                return self._apology, "error"
            raise
        record.answer.set_result(answer)
        if not record.bridged:
            self.book.settle(record)
        return answer, outcome

    async def _answer(self, record: CallRecord, params: MultiDict[str]) -> tuple[str, str]:
        call_sid = record.call_sid
        to_number = required(params, "To")
        from_number = params.get("From", "")
        started = time.perf_counter()
        route = self._mirror.route(to_number)
        if route is None:
            return self._reject(call_sid, "unknown_number", to_number=to_number)
        number, agent = route
        if not agent.is_active:
            return self._reject(call_sid, "inactive_agent", agent_id=agent.agent_id)
        if not self.book.try_admit(record, agent.agent_id, agent.max_concurrent_calls):
            return self._reject(call_sid, "at_capacity", agent_id=agent.agent_id)
        context = CallContext(
            call_sid=call_sid,
            room=room_name(call_sid),
            org_id=number.org_id,
            agent_id=agent.agent_id,
            agent_version=agent.version,
            from_number=from_number,
            to_number=to_number,
            started_at=datetime.now(UTC),
        )
        record.context = context
        looked_up = time.perf_counter()
        grant = self._signer.sign(context)
        signed = time.perf_counter()
        try:
            await self._rooms.create(context, grant)  # bounded by the LiveKit budget
        except Exception as exc:  # any LiveKit failure gets the same apology
            return self._livekit_failed(record, context, exc)
        created = time.perf_counter()
        self._metrics.rooms_created.inc()
        self._metrics.active_calls.set(self.book.active_total)
        record.bridged = True
        answer = twiml.bridge(
            call_sid=call_sid,
            sip_host=self._settings.livekit_sip_host,
            sip_username=self._settings.sip_username,
            sip_password=self._settings.sip_password,
            action_url=self._action_url,
            time_limit_seconds=self._settings.max_call_seconds,
        )
        done = time.perf_counter()
        stages = self._metrics.stage_seconds
        stages.labels("lookup").observe(looked_up - started)
        stages.labels("grant").observe(signed - looked_up)
        stages.labels("livekit").observe(created - signed)
        stages.labels("twiml").observe(done - created)
        self._events.publish(
            CallStarted(
                event_id=event_id(call_sid, "started"),
                call_sid=call_sid,
                org_id=context.org_id,
                agent_id=context.agent_id,
                at=context.started_at,
                room=context.room,
                from_number=from_number,
                to_number=to_number,
            )
        )
        log.info(
            "call bridged",
            call_sid=call_sid,
            agent_id=agent.agent_id,
            org_id=number.org_id,
            livekit_ms=round((created - signed) * 1000, 2),
        )
        return answer, "bridged"

    def _reject(
        self, call_sid: str, reason: twiml.RejectionReason, **fields: str
    ) -> tuple[str, str]:
        self._metrics.rejections.labels(reason).inc()
        log.info("call rejected", call_sid=call_sid, reason=reason, **fields)
        return self._rejections[reason], reason

    def _livekit_failed(
        self, record: CallRecord, context: CallContext, exc: Exception
    ) -> tuple[str, str]:
        kind = "timeout" if isinstance(exc, TimeoutError) else "error"
        self._metrics.livekit_failures.labels(kind).inc()
        self.book.release(record)
        log.error(
            "livekit room creation failed; apologising",
            call_sid=context.call_sid,
            kind=kind,
            error=type(exc).__name__,
        )
        self._events.publish(
            CallFailed(
                event_id=event_id(context.call_sid, "failed"),
                call_sid=context.call_sid,
                org_id=context.org_id,
                agent_id=context.agent_id,
                at=datetime.now(UTC),
                reason=f"livekit_{kind}",
            )
        )
        # The request may still complete after we gave up: do not leave a room with a dispatch.
        self._spawn(self._delete_room(context.room, context.call_sid))
        return self._apology, f"livekit_{kind}"

    # -- status callbacks and the Dial action ----------------------------------------------

    def status(self, params: MultiDict[str], *, dial_action: bool = False) -> str:
        """Record a call's progress; safe to receive twice and in any order."""
        call_sid = required(params, "CallSid")
        status = params.get("DialCallStatus" if dial_action else "CallStatus", "")
        record = self.book.get(call_sid)
        if not status:
            raise MissingParameter("DialCallStatus" if dial_action else "CallStatus")
        final = _FINAL_STATUSES.get(status)
        if final is None and status not in _LIVE_STATUSES:
            log.warning("unknown call status ignored", call_sid=call_sid, status=status)
            return twiml.hang_up() if dial_action else ""
        owner = self._owner(record, params)
        if final is not None:
            already_ended = record is not None and record.ended
            record = self.book.record_end(call_sid)
            self._metrics.active_calls.set(self.book.active_total)
            if not already_ended:
                self._spawn(self._delete_room(room_name(call_sid), call_sid))
            if owner is not None:
                org_id, agent_id = owner
                self._events.publish(
                    CallEnded(
                        event_id=event_id(call_sid, "ended"),
                        call_sid=call_sid,
                        org_id=org_id,
                        agent_id=agent_id,
                        at=twilio_time(params),
                        status=final,
                        reason=f"twilio_{'dial_' if dial_action else ''}{status}",
                        duration_seconds=duration(
                            params, "DialCallDuration" if dial_action else "CallDuration"
                        ),
                    )
                )
            log.info("call ended", call_sid=call_sid, status=status, dial_action=dial_action)
        elif owner is not None and not (record is not None and record.ended):
            # A late "in-progress" after the end must not revive the call; otherwise this is the
            # same `started` event the incoming webhook published (deduplicated by id).
            org_id, agent_id = owner
            self._events.publish(
                CallStarted(
                    event_id=event_id(call_sid, "started"),
                    call_sid=call_sid,
                    org_id=org_id,
                    agent_id=agent_id,
                    at=record.context.started_at
                    if record is not None and record.context is not None
                    else twilio_time(params),
                    room=room_name(call_sid),
                    from_number=params.get("From", ""),
                    to_number=params.get("To", ""),
                )
            )
        return twiml.hang_up() if dial_action else ""

    def _owner(self, record: CallRecord | None, params: MultiDict[str]) -> tuple[str, str] | None:
        """The call's org and agent: from this gateway's record, else from the mirror (another
        replica answered it). None for calls that were never bridged to an agent."""
        if record is not None:
            if record.context is None or not record.bridged:
                return None
            return record.context.org_id, record.context.agent_id
        route = self._mirror.route(params.get("To", ""))
        if route is None:
            return None
        number, agent = route
        return number.org_id, agent.agent_id

    async def _delete_room(self, room: str, call_sid: str) -> None:
        try:
            deleted = await self._rooms.delete(room)
        except Exception as exc:  # the empty timeout closes it anyway
            log.warning("room not deleted", call_sid=call_sid, room=room, error=type(exc).__name__)
            return
        if deleted:
            log.info("room deleted", call_sid=call_sid, room=room)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    def fallback(self) -> str:
        return self._apology
