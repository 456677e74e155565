"""Call events to the `CALLS` stream, published in the background so the TwiML answer never
waits for JetStream. Event ids are derived from the CallSid, so a retried or duplicated webhook
(or the same event from another gateway replica) is deduplicated by JetStream (`Nats-Msg-Id`)."""

from __future__ import annotations

import asyncio

import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from voiceagents.contracts.calls import CALL_EVENT_SUBJECTS, CallEvent
from voiceagents.contracts.codec import encode
from voiceagents.gateway.metrics import GatewayMetrics

log = structlog.get_logger("voiceagents.gateway.events")

_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


def event_id(call_sid: str, kind: str) -> str:
    """One id per call and kind: at most one `started` and one `ended` per call."""
    return f"{call_sid}.{kind}"


class EventPublisher:
    def __init__(self, js: JetStreamContext, metrics: GatewayMetrics) -> None:
        self._js = js
        self._metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()

    def publish(self, event: CallEvent) -> None:
        """Publish without waiting; retried until JetStream acknowledges (or retries run out)."""
        task = asyncio.create_task(self._publish(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, event: CallEvent) -> None:
        subject = CALL_EVENT_SUBJECTS[type(event)]
        kind = subject.rsplit(".", 1)[-1]
        payload = encode(event)
        headers = {"Nats-Msg-Id": event.event_id}
        for attempt, delay in enumerate((*_RETRY_DELAYS, None)):
            try:
                await self._js.publish(subject, payload, headers=headers, timeout=2.0)
            except (NatsError, TimeoutError) as exc:
                if delay is None:
                    self._metrics.events_failed.labels(kind).inc()
                    log.error(
                        "call event not published",
                        call_sid=event.call_sid,
                        event_id=event.event_id,
                        error=type(exc).__name__,
                    )
                    return
                log.warning(
                    "call event publish failed; retrying",
                    call_sid=event.call_sid,
                    event_id=event.event_id,
                    attempt=attempt + 1,
                    error=type(exc).__name__,
                )
                await asyncio.sleep(delay)
            else:
                self._metrics.events_published.labels(kind).inc()
                return

    async def drain(self, timeout: float) -> None:
        """Give in-flight publishes up to `timeout` seconds (on shutdown)."""
        if not self._pending:
            return
        _, pending = await asyncio.wait(set(self._pending), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("call events abandoned at shutdown", count=len(pending))
