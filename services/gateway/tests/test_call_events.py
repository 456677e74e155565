"""Status callbacks and the Dial action: one correct call record in the CALLS stream, whatever
the order and however often Twilio delivers them; the room goes when the call ends."""

from __future__ import annotations

import pytest
from livekit import api
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from voiceagents.contracts.calls import AnyCallEvent, CallEnded, CallStarted
from voiceagents.contracts.codec import decode_union
from voiceagents.devstack.servers import LiveKitServer

from .conftest import (
    Numbers,
    RunningGateway,
    eventually,
    knows_bridged,
    mirrored,
    new_call_sid,
)

pytestmark = pytest.mark.integration


async def call_events(nats: NatsClient, call_sid: str) -> list[AnyCallEvent]:
    """Every event of one call in the CALLS stream, in stream order."""
    js = nats.jetstream()
    sub = await js.subscribe("calls.v1.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    events: list[AnyCallEvent] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            event = decode_union(msg.data, AnyCallEvent)
            if event.call_sid == call_sid:
                events.append(event)
            if msg.metadata.num_pending == 0:
                return events
    finally:
        await sub.unsubscribe()


async def room_exists(livekit_server: LiveKitServer, room: str) -> bool:
    async with api.LiveKitAPI(
        livekit_server.url, livekit_server.api_key, livekit_server.api_secret
    ) as lk:
        return bool((await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms)


async def settle(gateway: RunningGateway) -> None:
    """Wait for the gateway's background work (event publishes, room deletions) to finish."""
    await gateway.state.handler.drain(timeout=10)
    await gateway.state.events.drain(timeout=10)


async def test_status_callbacks_in_reverse_order_make_one_correct_call_record(
    gateway: RunningGateway, numbers: Numbers, nats_ops: NatsClient, livekit_server: LiveKitServer
) -> None:
    number, agent = await gateway.bind(numbers)
    call_sid = new_call_sid()
    assert (await gateway.twilio.incoming(call_sid, "+14155550100", number)).sip_uri

    for status, seconds in [("completed", 42), ("in-progress", 0), ("ringing", 0)]:
        answer = await gateway.twilio.status(call_sid, status, seconds)
        assert answer.status_code == 200
    dial = await gateway.twilio.post(
        "/api/v1/voice/twilio/dial-action",
        {"CallSid": call_sid, "DialCallStatus": "completed", "DialCallDuration": "41"},
    )
    await settle(gateway)

    assert dial.hangs_up
    events = await call_events(nats_ops, call_sid)
    assert [type(e) for e in events] == [CallStarted, CallEnded]
    started, ended = events
    assert isinstance(started, CallStarted) and isinstance(ended, CallEnded)
    assert (started.agent_id, started.org_id, started.to_number) == (
        agent.agent_id,
        agent.org_id,
        number,
    )
    assert (ended.status, ended.duration_seconds) == ("completed", 42.0)
    assert (ended.agent_id, ended.org_id) == (agent.agent_id, agent.org_id)
    assert not await room_exists(livekit_server, f"call_{call_sid}")
    assert gateway.state.handler.book.active(agent.agent_id) == 0


async def test_a_call_answered_by_another_replica_is_still_recorded_once(
    gateway: RunningGateway, other_replica: RunningGateway, numbers: Numbers, nats_ops: NatsClient
) -> None:
    number, agent = await gateway.bind(numbers)
    await mirrored(other_replica, number, agent)
    call_sid = new_call_sid()
    params = {"CallSid": call_sid, "From": "+14155550100", "To": number}
    assert (await gateway.twilio.incoming(call_sid, "+14155550100", number)).sip_uri
    await eventually(knows_bridged(other_replica, call_sid))  # its `started`, heard on NATS

    # The other replica never saw the incoming webhook; Twilio repeats and reorders callbacks.
    for status in ["in-progress", "completed", "in-progress", "completed"]:
        await other_replica.twilio.post(
            "/api/v1/voice/twilio/status", {**params, "CallStatus": status, "CallDuration": "7"}
        )
    await settle(other_replica)
    await settle(gateway)

    events = await call_events(nats_ops, call_sid)
    assert [type(e) for e in events] == [CallStarted, CallEnded]
    assert all((e.agent_id, e.org_id) == (agent.agent_id, agent.org_id) for e in events)


async def test_a_failed_sip_leg_ends_the_call_with_that_status(
    gateway: RunningGateway, numbers: Numbers, nats_ops: NatsClient
) -> None:
    number, _ = await gateway.bind(numbers)
    call_sid = new_call_sid()
    await gateway.twilio.incoming(call_sid, "+14155550100", number)

    await gateway.twilio.post(
        "/api/v1/voice/twilio/dial-action", {"CallSid": call_sid, "DialCallStatus": "no-answer"}
    )
    await gateway.twilio.status(call_sid, "completed", 3)
    await settle(gateway)

    events = await call_events(nats_ops, call_sid)
    ended = [e for e in events if isinstance(e, CallEnded)]
    assert [e.status for e in ended] == ["no_answer"]


async def test_status_callbacks_must_be_signed(gateway: RunningGateway) -> None:
    answer = await gateway.twilio.post(
        "/api/v1/voice/twilio/status",
        {"CallSid": new_call_sid(), "CallStatus": "completed"},
        sign=False,
    )

    assert answer.status_code == 403
