"""Following `calls.v1.ended` and `calls.v1.failed` on the `CALLS` stream to revoke the grants of
calls that are over.

Every replica must see every end, so each has its own durable consumer (named by instance id;
removed by the server after a day without it). A new consumer starts one grant lifetime in the
past, so a replica that starts mid-call still learns of ends since. Acks are explicit: a message
is acked once applied; an unreadable one is terminated (it can never apply).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC, datetime, timedelta

import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from voiceagents.contracts import bus
from voiceagents.contracts.calls import (
    CALL_ENDED_SUBJECT,
    CALL_FAILED_SUBJECT,
    CALLS_STREAM,
    AnyCallEvent,
)
from voiceagents.contracts.codec import decode_union
from voiceagents.toolvault.metrics import ToolVaultMetrics
from voiceagents.toolvault.revocations import Revocations

log = structlog.get_logger("voiceagents.toolvault.call_ends")

_INACTIVE_SECONDS = 24 * 3600.0


def consumer_name(instance_id: str) -> str:
    return "toolvault-call-ends-" + re.sub(r"[^A-Za-z0-9_-]", "-", instance_id)[:64]


class CallEndFollower:
    def __init__(
        self,
        js: JetStreamContext,
        revocations: Revocations,
        metrics: ToolVaultMetrics,
        *,
        instance_id: str,
        lookback_seconds: float,
    ) -> None:
        self._js = js
        self._revocations = revocations
        self._metrics = metrics
        self._durable = consumer_name(instance_id)
        self._lookback = lookback_seconds
        self._task: asyncio.Task[None] | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        try:
            await self._js.consumer_info(CALLS_STREAM, self._durable)
        except NotFoundError:
            await self._js.add_consumer(
                CALLS_STREAM,
                ConsumerConfig(
                    durable_name=self._durable,
                    filter_subjects=[CALL_ENDED_SUBJECT, CALL_FAILED_SUBJECT],
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.BY_START_TIME,
                    opt_start_time=datetime.now(UTC) - timedelta(seconds=self._lookback),
                    max_deliver=5,
                    ack_wait=30.0,
                    inactive_threshold=_INACTIVE_SECONDS,
                ),
            )
        subscription = await self._js.pull_subscribe_bind(self._durable, stream=CALLS_STREAM)
        self._subscription = subscription
        self._task = asyncio.create_task(self._follow(subscription))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def _follow(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(100, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                bus.stop_if_cancelled()
                self.caught_up.set()
                continue
            except Exception:  # a NATS outage: the client reconnects; keep pulling
                bus.stop_if_cancelled()
                log.warning("call-end fetch failed", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                try:
                    event = decode_union(message.data, AnyCallEvent)
                except msgspec.ValidationError:
                    log.error("unreadable call event", subject=message.subject)
                    await message.term()
                    continue
                self._revocations.revoke(event.call_sid, event.at.timestamp())
                self._metrics.revocations.inc()
                log.info("call grant revoked", call_sid=event.call_sid, subject=message.subject)
                await message.ack()
