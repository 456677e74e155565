"""The JetStream consumer loop stops when its task is cancelled, even when nats-py turns that
cancellation into a connection error (as it does when shutdown closes the connection too); and
a message the database could not store comes back, however long the database is down."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from nats.errors import ConnectionClosedError

from voiceagents.registry.consumers import consume, retry_later

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

    async def add_consumer(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def pull_subscribe_bind(self, *args: Any, **kwargs: Any) -> ClosingSubscription:
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


class FakeMsg:
    """A JetStream message delivered `delivered` times, recording how it was settled."""

    def __init__(self, delivered: int) -> None:
        self.metadata = SimpleNamespace(num_delivered=delivered)
        self.settled: tuple[str, float | None] | None = None

    async def nak(self, delay: float | None = None) -> None:
        self.settled = ("nak", delay)

    async def term(self) -> None:
        self.settled = ("term", None)


async def test_a_database_outage_never_uses_a_message_up_but_its_own_bad_values_do() -> None:
    down = asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
    for error in (down, ConnectionRefusedError(), asyncpg.UndefinedTableError("not migrated")):
        msg = FakeMsg(delivered=50)
        assert await retry_later(msg, error)  # type: ignore[arg-type]
        assert msg.settled == ("nak", 60.0)  # a minute apart, never given up
    first = FakeMsg(delivered=1)
    assert await retry_later(first, down)  # type: ignore[arg-type]
    assert first.settled == ("nak", 0.5)
    # A value PostgreSQL refuses (and any bug the message trips) gets five deliveries.
    for error in (asyncpg.CharacterNotInRepertoireError("NUL"), KeyError("x")):
        fourth, fifth = FakeMsg(delivered=4), FakeMsg(delivered=5)
        assert await retry_later(fourth, error)  # type: ignore[arg-type]
        assert not await retry_later(fifth, error)  # type: ignore[arg-type]
        assert (fourth.settled, fifth.settled) == (("nak", 4.0), ("term", None))
