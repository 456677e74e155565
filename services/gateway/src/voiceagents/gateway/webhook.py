"""Twilio's voice webhooks: the incoming call, status callbacks, the Dial action and the fallback;
and the calls' lifecycle events every replica follows.

The incoming call's hot path is memory lookups, one Ed25519 signature and one LiveKit request
(CreateRoom with the agent dispatch in it); events go to JetStream after the answer is sent.
Twilio's callbacks for a call may reach another replica than its incoming webhook did, so each
replica follows `calls.v1.started`, `ended` and `failed` from all of them (and from workers):
it learns which calls are bridged and by whom, and frees its slot when a call it holds ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec
import structlog
from multidict import MultiDict

from voiceagents.contracts.calls import (
    AnyCallEvent,
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
        to_number = required(params, "To")
        record = self.book.get(call_sid)
        if record is not None:
            # The same webhook again (Twilio retry, a duplicate, or a call another replica
            # bridged): the same answer, no new work.
            return await asyncio.shield(record.answer), "duplicate"
        record = self.book.open(call_sid)
        try:
            answer, outcome = await self._answer(record, to_number, params)
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
        if record.started is None:
            self.book.settle(record)
        return answer, outcome

    async def _answer(
        self, record: CallRecord, to_number: str, params: MultiDict[str]
    ) -> tuple[str, str]:
        call_sid = record.call_sid
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
        if record.ended:
            # Twilio's final status came while the room was being made: nobody is on the line.
            # No `started` (the call never reached an agent); the room and its dispatch go.
            self._spawn(self._delete_room(context.room, call_sid))
            log.info("call ended before it was bridged", call_sid=call_sid)
            return twiml.hang_up(), "ended"
        self._metrics.active_calls.set(self.book.active_total)
        record.started = CallStarted(
            event_id=event_id(call_sid, "started"),
            call_sid=call_sid,
            org_id=context.org_id,
            agent_id=context.agent_id,
            at=context.started_at,
            room=context.room,
            from_number=from_number,
            to_number=to_number,
        )
        answer = self._bridge(call_sid)
        done = time.perf_counter()
        stages = self._metrics.stage_seconds
        stages.labels("lookup").observe(looked_up - started)
        stages.labels("grant").observe(signed - looked_up)
        stages.labels("livekit").observe(created - signed)
        stages.labels("twiml").observe(done - created)
        self._events.publish(record.started)
        log.info(
            "call bridged",
            call_sid=call_sid,
            agent_id=agent.agent_id,
            org_id=number.org_id,
            livekit_ms=round((created - signed) * 1000, 2),
        )
        return answer, "bridged"

    def _bridge(self, call_sid: str) -> str:
        """A pure function of the CallSid and the settings: every replica answers alike."""
        return twiml.bridge(
            call_sid=call_sid,
            sip_host=self._settings.livekit_sip_host,
            sip_username=self._settings.sip_username,
            sip_password=self._settings.sip_password,
            action_url=self._action_url,
            time_limit_seconds=self._settings.max_call_seconds,
        )

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
        # Who bridged the call, this replica or (learned from its `started`) another; None for a
        # call turned away, or one whose `started` this replica has not (yet) received.
        started = record.started if record is not None else None
        if final is not None:
            already_ended = record is not None and record.ended
            record = self.book.record_end(call_sid)
            self._metrics.active_calls.set(self.book.active_total)
            if not already_ended:
                self._spawn(self._delete_room(room_name(call_sid), call_sid))
            ended = CallEnded(
                event_id=event_id(call_sid, "ended"),
                call_sid=call_sid,
                org_id=started.org_id if started is not None else "",
                agent_id=started.agent_id if started is not None else "",
                at=twilio_time(params),
                status=final,
                reason=f"twilio_{'dial_' if dial_action else ''}{status}",
                duration_seconds=duration(
                    params, "DialCallDuration" if dial_action else "CallDuration"
                ),
            )
            if started is not None:
                self._events.publish(ended)
            elif record.unowned_end is None:
                # Turned away (nothing to publish), or bridged by a replica whose `started` is
                # still on its way: `_follow_started` publishes this end if it comes.
                record.unowned_end = ended
            log.info("call ended", call_sid=call_sid, status=status, dial_action=dial_action)
        elif started is not None and not (record is not None and record.ended):
            # A late "in-progress" after the end must not revive the call; otherwise this is the
            # same `started` event the incoming webhook published (deduplicated by id).
            self._events.publish(started)
        return twiml.hang_up() if dial_action else ""

    # -- every replica's and worker's call events (core NATS) ------------------------------

    def follow(self, event: AnyCallEvent) -> None:
        """A `calls.v1.started`, `ended` or `failed` from any replica or worker, this one's own
        included; safe to receive twice and in any order."""
        if isinstance(event, CallStarted):
            self._follow_started(event)
        elif isinstance(event, CallEnded | CallFailed):
            self._follow_end(event)

    def _follow_started(self, event: CallStarted) -> None:
        record = self.book.get(event.call_sid)
        if record is None:
            # Another replica bridged it: a repeated incoming webhook here gets the same answer.
            record = self.book.open(event.call_sid)
            record.answer.set_result(self._bridge(event.call_sid))
        if record.started is not None:
            return
        record.started = event
        end = record.unowned_end
        if end is not None:
            # Twilio's final status came here first; the call was bridged after all (its room
            # may have been made after our delete): end it now.
            record.unowned_end = None
            self._events.publish(
                msgspec.structs.replace(end, org_id=event.org_id, agent_id=event.agent_id)
            )
            self._spawn(self._delete_room(event.room, event.call_sid))
            log.info("call ended before its start was known", call_sid=event.call_sid)

    def _follow_end(self, event: CallEnded | CallFailed) -> None:
        record = self.book.get(event.call_sid)
        if record is None:
            return
        if event.source == "gateway":
            # Twilio's final status, or the gateway's failing of the call, reached a replica: the
            # call is over, as if it had come here. (A worker's end frees the agent's slot only;
            # the caller may still be on the line, which agent-loss handling looks after.)
            record.ended = True
            self.book.settle(record)
        if record.counted_for is not None:
            self.book.release(record)
            self._metrics.active_calls.set(self.book.active_total)
            log.info("call slot freed", call_sid=event.call_sid, event_id=event.event_id)

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
