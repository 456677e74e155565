"""What this gateway knows of calls: the answer given per CallSid (so a repeated webhook gets the
same TwiML and does no work twice), which calls are bridged to an agent and by whom (for their
`ended`), and the active calls per agent (for `max_concurrent_calls`).

The active-call count is per gateway process: with several replicas behind a load balancer each
replica enforces the limit on the calls it answered, so the effective limit is up to
`replicas x max_concurrent_calls`. An exact cross-replica count would need a shared counter on
the call path (a NATS round trip on every call); we chose local state and say so in the README.
Twilio's final callback may reach any replica, so every replica follows the calls' `started`,
`ended` and `failed` events on NATS (webhook.py): the replica holding a slot frees it whichever
replica or worker said the call is over. A live call's entry expires after the longest call, so
a lost end cannot hold capacity forever; a call that ended or was turned away is remembered only
long enough to answer Twilio's retries and late callbacks the same way (memory stays bounded by
the rate).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from voiceagents.contracts.calls import CallContext, CallEnded, CallStarted
from voiceagents.gateway import twiml


@dataclass
class CallRecord:
    call_sid: str
    answer: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Set by the replica that answered the incoming webhook.
    context: CallContext | None = None
    # Set while the call counts against this agent's max_concurrent_calls.
    counted_for: str | None = None
    # The call's `started` once it is bridged to an agent, by this replica or another (learned
    # from NATS): the org and agent its `ended` names. None for calls turned away.
    started: CallStarted | None = None
    ended: bool = False
    # A final status that came before this replica knew the call was bridged; it is published
    # (with the org and agent) if the call's `started` arrives after all.
    unowned_end: CallEnded | None = None
    expires_at: float = 0.0


class CallBook:
    def __init__(self, live_retention_seconds: float, done_retention_seconds: float) -> None:
        self._live_retention = live_retention_seconds
        self._done_retention = done_retention_seconds
        self._calls: dict[str, CallRecord] = {}
        self._active: dict[str, int] = {}

    def get(self, call_sid: str) -> CallRecord | None:
        return self._calls.get(call_sid)

    def open(self, call_sid: str) -> CallRecord:
        record = CallRecord(call_sid, expires_at=time.monotonic() + self._live_retention)
        self._calls[call_sid] = record
        return record

    def record_end(self, call_sid: str) -> CallRecord:
        """Mark the call ended (creating its record if this gateway never saw it start), and free
        its capacity. Idempotent."""
        record = self._calls.get(call_sid)
        if record is None:
            record = self.open(call_sid)
            # An incoming webhook for this call after its end (delivered late) hangs up.
            record.answer.set_result(twiml.hang_up())
        record.ended = True
        self.release(record)
        self.settle(record)
        return record

    def settle(self, record: CallRecord) -> None:
        """The call is over (ended or turned away): keep it only for retries and late callbacks."""
        record.expires_at = min(record.expires_at, time.monotonic() + self._done_retention)

    def active(self, agent_id: str) -> int:
        return self._active.get(agent_id, 0)

    @property
    def active_total(self) -> int:
        return sum(self._active.values())

    def try_admit(self, record: CallRecord, agent_id: str, limit: int | None) -> bool:
        """Count the call against its agent unless that would exceed `limit`."""
        count = self._active.get(agent_id, 0)
        if limit is not None and count >= limit:
            return False
        self._active[agent_id] = count + 1
        record.counted_for = agent_id
        return True

    def release(self, record: CallRecord) -> None:
        agent_id = record.counted_for
        if agent_id is None:
            return
        record.counted_for = None
        remaining = self._active.get(agent_id, 1) - 1
        if remaining > 0:
            self._active[agent_id] = remaining
        else:
            self._active.pop(agent_id, None)

    def sweep(self) -> int:
        """Forget expired calls (freeing any capacity a lost status callback left held)."""
        now = time.monotonic()
        expired = [sid for sid, record in self._calls.items() if record.expires_at < now]
        for sid in expired:
            record = self._calls.pop(sid)
            self.release(record)
        return len(expired)
