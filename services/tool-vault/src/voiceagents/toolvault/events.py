"""Audit events to the `TOOLVAULT` stream: who, which call, which agent tool, the outcome; never
secret content. Published in the background so a release never waits for JetStream; each event
id is its `Nats-Msg-Id`, so a retried publish is stored once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import structlog
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from voiceagents.contracts.codec import encode
from voiceagents.contracts.toolvault import (
    CONNECTED_SUBJECT,
    REFRESH_FAILED_SUBJECT,
    REFRESHED_SUBJECT,
    RELEASED_SUBJECT,
    AnyToolVaultEvent,
    CredentialConnected,
    CredentialRefreshed,
    CredentialRefreshFailed,
    CredentialsReleased,
)
from voiceagents.toolvault.metrics import ToolVaultMetrics

log = structlog.get_logger("voiceagents.toolvault.events")

_SUBJECTS: dict[type[AnyToolVaultEvent], str] = {
    CredentialConnected: CONNECTED_SUBJECT,
    CredentialRefreshed: REFRESHED_SUBJECT,
    CredentialRefreshFailed: REFRESH_FAILED_SUBJECT,
    CredentialsReleased: RELEASED_SUBJECT,
}
_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def new_event_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return datetime.now(UTC)


class AuditPublisher:
    def __init__(self, js: JetStreamContext, metrics: ToolVaultMetrics) -> None:
        self._js = js
        self._metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()

    def publish(self, event: AnyToolVaultEvent) -> None:
        task = asyncio.create_task(self._publish(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, event: AnyToolVaultEvent) -> None:
        subject = _SUBJECTS[type(event)]
        payload = encode(event)
        headers = {"Nats-Msg-Id": event.event_id}
        for delay in (*_RETRY_DELAYS, None):
            try:
                await self._js.publish(subject, payload, headers=headers, timeout=2.0)
                return
            except (NatsError, TimeoutError) as exc:
                if delay is None:
                    self._metrics.events_failed.inc()
                    log.error(
                        "audit event not published",
                        event_id=event.event_id,
                        subject=subject,
                        error=type(exc).__name__,
                    )
                    return
                await asyncio.sleep(delay)

    async def drain(self, timeout: float) -> None:
        if not self._pending:
            return
        _, pending = await asyncio.wait(set(self._pending), timeout=timeout)
        for task in pending:
            task.cancel()
