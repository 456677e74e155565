"""A call's events to the `CALLS` stream: agent joined, tool invocations, transcript turns, the end.

Published in the background (the conversation never waits for JetStream) with JetStream acks
and retries; `Nats-Msg-Id` is the event id, so a retried publish is stored once. Ids are derived
from the CallSid and a per-call sequence, so they never collide with the gateway's own events.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from voiceagents.contracts.calls import (
    CALL_EVENT_SUBJECTS,
    AgentJoined,
    CallContext,
    CallEnded,
    CallEvent,
    CallFailed,
    CallStatus,
    EndedBy,
    ToolInvoked,
    TranscriptEntry,
    TranscriptTurn,
)
from voiceagents.contracts.codec import encode
from voiceagents.worker.tools.execution import ToolInvocation

log = structlog.get_logger("voiceagents.worker.events")

E = TypeVar("E", bound=CallEvent)

_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def now() -> datetime:
    return datetime.now(UTC)


class CallEvents:
    """Builds and publishes one call's events."""

    def __init__(
        self,
        js: JetStreamContext | None,
        call: CallContext,
        *,
        on_published: Callable[[CallEvent], None] | None = None,
    ) -> None:
        self._js = js
        self._call = call
        self._sequence = itertools.count(1)
        # One publisher per call, in order: a transcript line never overtakes the greeting.
        self._queue: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None
        self._on_published = on_published
        self.transcript: list[TranscriptEntry] = []

    def _make(self, event_type: type[E], kind: str, **fields: Any) -> E:
        return event_type(
            event_id=f"{self._call.call_sid}.worker.{kind}",
            call_sid=self._call.call_sid,
            org_id=self._call.org_id,
            agent_id=self._call.agent_id,
            at=now(),
            **fields,
        )

    def agent_joined(self, worker_id: str, setup_ms: float) -> None:
        self.publish(
            self._make(AgentJoined, "agent_joined", worker_id=worker_id, setup_ms=setup_ms)
        )

    def tool_invoked(self, invocation: ToolInvocation) -> None:
        binding = invocation.binding
        self.publish(
            self._make(
                ToolInvoked,
                f"tool.{next(self._sequence)}",
                tool_name=binding.tool_name,
                function=binding.function,
                arguments=invocation.arguments,
                outcome=invocation.outcome,
                duration_ms=invocation.duration_ms,
                error=invocation.error,
            )
        )

    def transcript_turn(self, role: str, text: str) -> None:
        entry = TranscriptEntry(role="agent" if role == "agent" else "caller", text=text, at=now())
        self.transcript.append(entry)
        self.publish(self._make(TranscriptTurn, f"transcript.{next(self._sequence)}", entry=entry))

    def ended(
        self,
        *,
        ended_by: EndedBy,
        reason: str,
        duration_seconds: float | None = None,
        status: CallStatus = "completed",
    ) -> None:
        self.publish(
            self._make(
                CallEnded,
                "ended",
                status=status,
                ended_by=ended_by,
                reason=reason,
                duration_seconds=duration_seconds,
                transcript=list(self.transcript),
                source="worker",
            )
        )

    def failed(self, reason: str) -> None:
        self.publish(self._make(CallFailed, "failed", reason=reason, source="worker"))

    def publish(self, event: CallEvent) -> None:
        self._queue.put_nowait(event)
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish_queued())

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for every event of this call to be acknowledged."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.error("call events not all published", left=self._queue.qsize())

    async def _publish_queued(self) -> None:
        while not self._queue.empty():
            event = self._queue.get_nowait()
            try:
                await self._publish(event)
            finally:
                self._queue.task_done()

    async def _publish(self, event: CallEvent) -> None:
        if self._on_published is not None:
            self._on_published(event)
        if self._js is None:
            return
        subject = CALL_EVENT_SUBJECTS[type(event)]
        payload = encode(event)
        headers = {"Nats-Msg-Id": event.event_id}
        for delay in (*_RETRY_DELAYS, None):
            try:
                await self._js.publish(subject, payload, headers=headers, timeout=2.0)
                return
            except (NatsError, TimeoutError) as exc:
                if delay is None:
                    log.error(
                        "call event not published",
                        event_id=event.event_id,
                        error=type(exc).__name__,
                    )
                    return
                await asyncio.sleep(delay)
