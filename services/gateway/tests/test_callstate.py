"""The gateway's call book: capacity per agent, and bounded memory of finished calls."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from voiceagents.gateway import callstate
from voiceagents.gateway.callstate import CallBook

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(callstate, "time", SimpleNamespace(monotonic=fake))
    return fake


async def test_a_call_whose_status_callback_never_comes_frees_its_capacity_after_the_longest_call(
    clock: Clock,
) -> None:
    book = CallBook(live_retention_seconds=3600, done_retention_seconds=60)
    record = book.open("CA1")
    assert book.try_admit(record, "agent", limit=1)
    assert not book.try_admit(book.open("CA2"), "agent", limit=1)

    clock.now += 3599
    book.sweep()
    assert book.active("agent") == 1
    clock.now += 2
    book.sweep()

    assert book.active("agent") == 0
    assert book.get("CA1") is None


async def test_ended_calls_are_forgotten_soon_but_not_before_late_callbacks(clock: Clock) -> None:
    book = CallBook(live_retention_seconds=3600, done_retention_seconds=60)
    record = book.open("CA1")
    book.try_admit(record, "agent", limit=None)

    book.record_end("CA1")
    book.record_end("CA1")
    assert book.active("agent") == 0
    clock.now += 59
    book.sweep()
    assert book.get("CA1") is not None and book.get("CA1").ended  # type: ignore[union-attr]
    clock.now += 2
    book.sweep()

    assert book.get("CA1") is None
