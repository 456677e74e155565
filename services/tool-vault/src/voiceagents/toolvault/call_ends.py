"""Following `calls.v1.ended` and `calls.v1.failed` on the `CALLS` stream to revoke the grants of
calls that are over.

Revocations live in memory, so every start replays the ends of one grant lifetime back before
tool-vault answers a release: a restarted replica, under the same instance id or another, still
refuses the grants of calls that ended before it. Each replica reads through its own ephemeral
pull consumer (no acks: the position is the last stream sequence applied; the server removes
the consumer two minutes after nobody pulls from it). If pulling fails (the consumer was deleted,
NATS restarted), the follower creates a new consumer from the next unread sequence; until that
one has caught up, `Revocations.current` is clear, so releases wait and /readyz says not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from datetime import UTC, datetime, timedelta

import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

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

_INACTIVE_SECONDS = 120.0
_BATCH = 256
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


def consumer_prefix(instance_id: str) -> str:
    """This replica's consumers are named `<prefix>-<random>` (a new one on every start)."""
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
        self._prefix = consumer_prefix(instance_id)
        self._lookback = lookback_seconds
        # The next stream sequence to read; 0 until the first end is applied (start by time).
        self._next_sequence = 0
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the call ends; returns once those of the look-back are applied."""
        self._revocations.current.clear()
        self._task = asyncio.create_task(self._run())
        try:
            await self._revocations.current.wait()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            subscription: JetStreamContext.PullSubscription | None = None
            try:
                subscription = await self._subscribe()
                await self._pull(subscription)
            except Exception:  # the consumer is gone or NATS is down: make a new one
                bus.stop_if_cancelled()
                self._revocations.current.clear()
                log.warning("call-end consumer failed; creating a new one", exc_info=True)
            finally:
                if subscription is not None:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()
            await asyncio.sleep(_RETRY_SECONDS[min(self._failures, len(_RETRY_SECONDS) - 1)])
            self._failures += 1

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        name = f"{self._prefix}-{secrets.token_hex(4)}"
        config = ConsumerConfig(
            name=name,
            filter_subjects=[CALL_ENDED_SUBJECT, CALL_FAILED_SUBJECT],
            ack_policy=AckPolicy.NONE,
            inactive_threshold=_INACTIVE_SECONDS,
            mem_storage=True,
        )
        if self._next_sequence:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self._next_sequence
        else:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.now(UTC) - timedelta(seconds=self._lookback)
        info = await self._js.add_consumer(CALLS_STREAM, config)
        subscription = await self._js.pull_subscribe_bind(name, stream=CALLS_STREAM)
        log.info("following call ends", consumer=name, pending=info.num_pending)
        if not info.num_pending:
            self._caught_up()
        return subscription

    async def _pull(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(_BATCH, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                bus.stop_if_cancelled()
                self._caught_up()  # nothing left to read: every end so far is applied
                continue
            for message in messages:
                self._apply(message.data, message.subject)
                self._next_sequence = message.metadata.sequence.stream + 1
            if messages and not messages[-1].metadata.num_pending:
                self._caught_up()

    def _apply(self, data: bytes, subject: str) -> None:
        try:
            event = decode_union(data, AnyCallEvent)
        except msgspec.DecodeError:  # not JSON, or not an event: it can never apply; skip it
            log.error("unreadable call event", subject=subject)
            return
        self._revocations.revoke(event.call_sid, event.at.timestamp())
        self._metrics.revocations.inc()
        # A start replays an hour of ends: one line each only for those that happen live.
        report = log.info if self._revocations.current.is_set() else log.debug
        report("call grant revoked", call_sid=event.call_sid, subject=subject)

    def _caught_up(self) -> None:
        if not self._revocations.current.is_set():
            log.info("call ends caught up", revoked=len(self._revocations))
        self._failures = 0
        self._revocations.current.set()
