"""Two gateway replicas behind one load balancer: Twilio's callbacks for a call may reach the
replica that did not answer it. Each replica follows the calls' `started`, `ended` and `failed`
on NATS, so lines are freed where they are held, and only bridged calls are recorded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NatsClient

from voiceagents.contracts.calls import (
    CALL_ENDED_SUBJECT,
    CALL_STARTED_SUBJECT,
    CallEnded,
    CallStarted,
    room_name,
)
from voiceagents.contracts.codec import decode, encode
from voiceagents.gateway.twiml import REJECTIONS

from .conftest import (
    Numbers,
    RunningGateway,
    eventually,
    knows_bridged,
    mirrored,
    new_call_sid,
)
from .test_call_events import call_events, settle

pytestmark = pytest.mark.integration

CALLER = "+14155550100"


async def test_a_call_ended_on_another_replica_frees_the_line_where_it_was_answered(
    gateway: RunningGateway, other_replica: RunningGateway, numbers: Numbers, nats_ops: NatsClient
) -> None:
    number, agent = await gateway.bind(numbers, max_concurrent_calls=1)
    await mirrored(other_replica, number, agent)
    first = new_call_sid()
    assert (await gateway.twilio.incoming(first, CALLER, number)).sip_uri
    busy = await gateway.twilio.incoming(new_call_sid(), CALLER, number)
    assert busy.spoken == [REJECTIONS["at_capacity"]]

    # Both of Twilio's final callbacks reach the other replica.
    await other_replica.twilio.status(first, "completed", 30)
    await other_replica.twilio.post(
        "/api/v1/voice/twilio/dial-action", {"CallSid": first, "DialCallStatus": "answered"}
    )
    await eventually(lambda: gateway.state.handler.book.active(agent.agent_id) == 0)

    assert (await gateway.twilio.incoming(new_call_sid(), CALLER, number)).sip_uri
    await settle(other_replica)
    await settle(gateway)
    events = await call_events(nats_ops, first)
    assert [type(e) for e in events] == [CallStarted, CallEnded]
    ended = events[1]
    assert isinstance(ended, CallEnded)
    assert (ended.agent_id, ended.org_id, ended.status) == (
        agent.agent_id,
        agent.org_id,
        "completed",
    )


async def test_the_voice_workers_own_end_frees_the_line(
    gateway: RunningGateway, numbers: Numbers, nats_ops: NatsClient
) -> None:
    number, agent = await gateway.bind(numbers, max_concurrent_calls=1)
    call_sid = new_call_sid()
    assert (await gateway.twilio.incoming(call_sid, CALLER, number)).sip_uri

    # No Twilio callback reaches this replica; the worker says the call is over.
    worker_end = CallEnded(
        event_id=f"{call_sid}.worker.ended",
        call_sid=call_sid,
        org_id=agent.org_id,
        agent_id=agent.agent_id,
        at=datetime.now(UTC),
        status="completed",
        ended_by="caller",
        reason="participant_disconnected",
        source="worker",
    )
    await nats_ops.jetstream().publish(
        CALL_ENDED_SUBJECT, encode(worker_end), headers={"Nats-Msg-Id": worker_end.event_id}
    )
    await eventually(lambda: gateway.state.handler.book.active(agent.agent_id) == 0)

    assert (await gateway.twilio.incoming(new_call_sid(), CALLER, number)).sip_uri


async def test_a_call_turned_away_by_one_replica_is_not_recorded_by_another(
    gateway: RunningGateway, other_replica: RunningGateway, numbers: Numbers, nats_ops: NatsClient
) -> None:
    number, agent = await gateway.bind(numbers, max_concurrent_calls=1)
    await mirrored(other_replica, number, agent)
    assert (await gateway.twilio.incoming(new_call_sid(), CALLER, number)).sip_uri
    turned_away = new_call_sid()
    busy = await gateway.twilio.incoming(turned_away, CALLER, number)
    assert busy.spoken == [REJECTIONS["at_capacity"]]

    # Its `completed` (with `To`, which the other replica could route) reaches the other replica.
    answer = await other_replica.twilio.post(
        "/api/v1/voice/twilio/status",
        {"CallSid": turned_away, "From": CALLER, "To": number, "CallStatus": "completed"},
    )
    await settle(other_replica)
    await settle(gateway)

    assert answer.status_code == 200
    assert await call_events(nats_ops, turned_away) == []


async def test_a_final_status_heard_before_the_calls_start_ends_the_call_once_it_is_heard(
    gateway: RunningGateway, numbers: Numbers, nats_ops: NatsClient
) -> None:
    number, agent = await gateway.bind(numbers)
    call_sid = new_call_sid()
    ends = await nats_ops.subscribe(CALL_ENDED_SUBJECT)

    # Twilio's `completed` reaches this replica before the answering replica's `started` did.
    await gateway.twilio.status(call_sid, "canceled", 0)
    await settle(gateway)
    assert await call_events(nats_ops, call_sid) == []
    started = CallStarted(
        event_id=f"{call_sid}.started",
        call_sid=call_sid,
        org_id=agent.org_id,
        agent_id=agent.agent_id,
        at=datetime.now(UTC),
        room=room_name(call_sid),
        from_number=CALLER,
        to_number=number,
    )
    await nats_ops.jetstream().publish(
        CALL_STARTED_SUBJECT, encode(started), headers={"Nats-Msg-Id": started.event_id}
    )

    async with asyncio.timeout(10):
        async for message in ends.messages:
            ended = decode(message.data, CallEnded)
            if ended.call_sid == call_sid:
                break
    assert (ended.agent_id, ended.org_id, ended.status) == (
        agent.agent_id,
        agent.org_id,
        "canceled",
    )
    await ends.unsubscribe()


async def test_a_repeated_incoming_webhook_on_another_replica_is_answered_from_memory(
    gateway: RunningGateway, other_replica: RunningGateway, numbers: Numbers
) -> None:
    number, agent = await gateway.bind(numbers, max_concurrent_calls=1)
    await mirrored(other_replica, number, agent)
    call_sid = new_call_sid()
    first = await gateway.twilio.incoming(call_sid, CALLER, number)
    await eventually(knows_bridged(other_replica, call_sid))  # its `started`, heard on NATS

    again = await other_replica.twilio.incoming(call_sid, CALLER, number)

    assert again.sip_uri is not None and again.body == first.body
    assert other_replica.state.handler.book.active(agent.agent_id) == 0
    metrics = (await other_replica.client.get("/metrics")).text
    assert 'gateway_webhook_seconds_count{endpoint="incoming",outcome="duplicate"} 1.0' in metrics
    assert "gateway_rooms_created_total 0.0" in metrics
