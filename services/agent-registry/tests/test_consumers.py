"""The JetStream consumer loop stops when its task is cancelled, even when nats-py turns that
cancellation into a connection error (as it does when shutdown closes the connection too)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.errors import ConnectionClosedError

from voiceagents.registry.consumers import consume

pytestmark = pytest.mark.unit


class ClosingSubscription:
    """Like nats-py's pull subscription while its connection closes under a cancelled fetch."""

    def __init__(self) -> None:
        self.fetching = asyncio.Event()

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        self.fetching.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionClosedError from None
        return []

    async def unsubscribe(self) -> None:
        return None


class FakeJetStream:
    def __init__(self) -> None:
        self.subscription = ClosingSubscription()

    async def pull_subscribe(self, *args: Any, **kwargs: Any) -> ClosingSubscription:
        return self.subscription


async def test_a_cancelled_consumer_stops_although_nats_reports_a_closed_connection() -> None:
    js = FakeJetStream()

    async def handle(message: Any) -> None:
        raise AssertionError("no message was sent")

    task = asyncio.create_task(
        consume(js, stream="CALLS", durable="d", subject="calls.v1.>", handle=handle)  # type: ignore[arg-type]
    )
    await js.subscription.fetching.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task}  # a guard against hanging, not a speed assertion
    assert task.cancelled()
