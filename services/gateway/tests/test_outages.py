"""Calls keep being answered sensibly while a dependency is down: LiveKit stopped or hanging →
an apology well before Twilio's 15 s limit; registry, PostgreSQL and even NATS down → calls to
bound numbers still get rooms and TwiML from the in-memory mirror."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from livekit import api

from voiceagents.contracts.calls import CallFailed, CallStarted
from voiceagents.devstack.servers import LiveKitServer, NatsServer
from voiceagents.gateway.twiml import APOLOGY

from .conftest import Numbers, make_settings, new_call_sid, run_gateway, safe_passwords
from .test_call_events import call_events

pytestmark = pytest.mark.integration

TWILIO_WEBHOOK_TIMEOUT_MS = 15_000


@pytest.fixture
def silent_livekit() -> Iterator[str]:
    """A port that accepts connections and never answers: LiveKit hung."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_stopped_livekit_gets_the_caller_an_apology_and_a_failed_event(
    numbers: Numbers, nats_server: NatsServer
) -> None:
    livekit = LiveKitServer().start()
    settings = make_settings(nats_server, livekit.url, livekit.api_key, livekit.api_secret)
    async for gateway in run_gateway(settings):
        number, agent = await gateway.bind(numbers)
        assert (await gateway.twilio.incoming(new_call_sid(), "+14155550100", number)).sip_uri
        livekit.stop()
        call_sid = new_call_sid()

        answer = await gateway.twilio.incoming(call_sid, "+14155550100", number)
        await gateway.state.events.drain(timeout=10)

        assert answer.status_code == 200
        assert answer.spoken == [APOLOGY]
        assert answer.hangs_up
        assert answer.elapsed_ms < TWILIO_WEBHOOK_TIMEOUT_MS
        nc = await nats.connect(**nats_server.credentials("ops"))
        events = await call_events(nc, call_sid)
        await nc.close()
        assert [type(e) for e in events] == [CallFailed]
        assert events[0].agent_id == agent.agent_id
        # The agent's capacity is not held by a call that never happened.
        assert gateway.state.handler.book.active(agent.agent_id) == 1


async def test_a_hanging_livekit_is_given_up_on_after_the_budget(
    numbers: Numbers, nats_server: NatsServer, silent_livekit: str
) -> None:
    settings = make_settings(
        nats_server, silent_livekit, "devkey", "s" * 32, livekit_budget_seconds=0.3
    )
    async for gateway in run_gateway(settings):
        number, _ = await gateway.bind(numbers)

        answer = await gateway.twilio.incoming(new_call_sid(), "+14155550100", number)

        assert answer.spoken == [APOLOGY]
        assert answer.elapsed_ms < TWILIO_WEBHOOK_TIMEOUT_MS
        metrics = (await gateway.client.get("/metrics")).text
        assert 'gateway_livekit_failures_total{kind="timeout"} 1.0' in metrics


@pytest.fixture
async def own_nats() -> AsyncIterator[NatsServer]:
    with NatsServer(passwords=safe_passwords()) as server:
        yield server


async def test_calls_are_routed_from_memory_with_registry_postgresql_and_nats_down(
    own_nats: NatsServer, livekit_server: LiveKitServer
) -> None:
    """No registry and no PostgreSQL run in this test at all; the numbers are in NATS KV, as the
    registry projected them. Then NATS itself stops: calls still get rooms and TwiML, and the
    `started` events reach the stream once NATS is back."""
    ops = await nats.connect(**own_nats.credentials("ops"))
    numbers = Numbers(ops)
    settings = make_settings(
        own_nats, livekit_server.url, livekit_server.api_key, livekit_server.api_secret
    )
    async for gateway in run_gateway(settings):
        number, agent = await gateway.bind(numbers)
        await ops.close()
        own_nats.pause()
        call_sid = new_call_sid()

        answer = await gateway.twilio.incoming(call_sid, "+14155550100", number)

        assert answer.sip_uri is not None
        async with api.LiveKitAPI(
            livekit_server.url, livekit_server.api_key, livekit_server.api_secret
        ) as lk:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[f"call_{call_sid}"]))
        assert len(rooms.rooms) == 1

        own_nats.resume()
        await gateway.state.events.drain(timeout=60)
        ops = await nats.connect(**own_nats.credentials("ops"))
        events = await call_events(ops, call_sid)
        await ops.close()
        assert [type(e) for e in events] == [CallStarted]
        assert events[0].agent_id == agent.agent_id
