"""A voice agent that dies mid-call: LiveKit's own webhook tells the gateway, which logs the call
as failed and closes the room, so no caller is left in a silent room. Real livekit-server
posting real signed webhooks; the agent is a real LiveKit participant (agent kind) in its own
process, killed with SIGKILL as an OOM kill would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from livekit import api
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from voiceagents.contracts.calls import CALL_FAILED_SUBJECT, CallFailed
from voiceagents.contracts.codec import decode
from voiceagents.devstack.phone import SimulatedCaller
from voiceagents.devstack.servers import LiveKitServer, NatsServer, free_port
from voiceagents.gateway.agentloss import AGENT_LOST_REASON, LIVEKIT_WEBHOOK_PATH

from .conftest import Numbers, RunningGateway, make_settings, new_call_sid, run_gateway
from .test_call_events import call_events, room_exists

pytestmark = pytest.mark.integration

AGENT_PARTICIPANT = Path(__file__).with_name("agent_participant.py")
GRACE_SECONDS = 0.5


@pytest.fixture(scope="module")
def gateway_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def webhook_livekit(gateway_port: int) -> Iterator[LiveKitServer]:
    """A LiveKit server that posts its webhooks to this module's gateway."""
    url = f"http://127.0.0.1:{gateway_port}{LIVEKIT_WEBHOOK_PATH}"
    with LiveKitServer(webhook_urls=[url]) as server:
        yield server


@pytest.fixture
async def gateway(
    numbers: Numbers, nats_server: NatsServer, webhook_livekit: LiveKitServer, gateway_port: int
) -> AsyncIterator[RunningGateway]:
    settings = make_settings(
        nats_server,
        webhook_livekit.url,
        webhook_livekit.api_key,
        webhook_livekit.api_secret,
        agent_lost_grace_seconds=GRACE_SECONDS,
    )
    async for running in run_gateway(settings, port=gateway_port):
        yield running


class AgentProcess:
    """The agent participant's process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def join(cls, livekit: LiveKitServer, room: str) -> AgentProcess:
        token = (
            api.AccessToken(livekit.api_key, livekit.api_secret)
            .with_identity(f"agent-{room}")
            .with_kind("agent")
            .with_grants(api.VideoGrants(room_join=True, room=room, agent=True))
            .to_jwt()
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(AGENT_PARTICIPANT),
            livekit.ws_url,
            token,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        agent = cls(process)
        assert await agent.line() == "joined"
        return agent

    async def line(self) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            return (await self.process.stdout.readline()).decode().strip()

    async def leave(self) -> None:
        """A clean disconnect, as a worker that finished its call."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"leave\n")
        assert await self.line() == "left"
        await self.process.wait()

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()


async def bridged_call(
    gateway: RunningGateway, numbers: Numbers, livekit: LiveKitServer
) -> tuple[str, str, SimulatedCaller, AgentProcess]:
    """A call the gateway bridged: its room, the agent in it and the caller in it."""
    number, agent_config = await gateway.bind(numbers)
    call_sid = new_call_sid()
    assert (await gateway.twilio.incoming(call_sid, "+14155550100", number)).sip_uri
    room = f"call_{call_sid}"
    agent = await AgentProcess.join(livekit, room)
    caller = SimulatedCaller(
        livekit_url=livekit.ws_url,
        api_key=livekit.api_key,
        api_secret=livekit.api_secret,
        room=room,
        call_sid=call_sid,
        from_number="+14155550100",
        to_number=number,
    )
    await caller.join()
    return call_sid, agent_config.agent_id, caller, agent


def webhook_count(gateway: RunningGateway, outcome: str) -> float:
    value = gateway.state.metrics.registry.get_sample_value(
        "gateway_webhook_seconds_count", {"endpoint": "livekit", "outcome": outcome}
    )
    return value or 0.0


async def agent_departure_handled(gateway: RunningGateway, outcome: str) -> None:
    """Wait until LiveKit has told the gateway of an agent's departure (seen as `outcome`) and
    every check it started ran."""
    async with asyncio.timeout(60):
        while webhook_count(gateway, outcome) < 1:  # noqa: ASYNC110 - a metric, no event
            await asyncio.sleep(0.05)
    await gateway.state.agent_loss.drain(timeout=30)
    await gateway.state.handler.drain(timeout=10)
    await gateway.state.events.drain(timeout=10)


async def test_killed_agent_fails_the_call_and_closes_the_room(
    gateway: RunningGateway,
    numbers: Numbers,
    nats_ops: NatsClient,
    webhook_livekit: LiveKitServer,
) -> None:
    js = nats_ops.jetstream()
    failed = await js.subscribe(
        CALL_FAILED_SUBJECT, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    call_sid, agent_id, caller, agent = await bridged_call(gateway, numbers, webhook_livekit)
    hung_up = asyncio.Event()
    caller.room.on("disconnected", lambda _reason: hung_up.set())
    try:
        await agent.kill()

        async with asyncio.timeout(60):
            while True:
                event = decode((await failed.next_msg(timeout=60)).data, CallFailed)
                if event.call_sid == call_sid:
                    break
        assert event.reason == AGENT_LOST_REASON
        assert event.agent_id == agent_id
        assert event.source == "gateway"
        await gateway.state.agent_loss.drain(timeout=30)
        assert not await room_exists(webhook_livekit, f"call_{call_sid}")
        # The caller is hung up (the SIP leg goes with the room), not left in silence.
        async with asyncio.timeout(30):
            await hung_up.wait()
    finally:
        await failed.unsubscribe()
        await caller.hang_up()


async def test_a_normal_end_deletes_the_room_first_and_no_failure_is_logged(
    gateway: RunningGateway,
    numbers: Numbers,
    nats_ops: NatsClient,
    webhook_livekit: LiveKitServer,
) -> None:
    call_sid, _, caller, agent = await bridged_call(gateway, numbers, webhook_livekit)
    try:
        # Twilio reports the end; the gateway deletes the room; LiveKit removes the agent.
        await gateway.twilio.status(call_sid, "completed", 30)
        await agent_departure_handled(gateway, "room_closed")
        await agent.process.wait()
    finally:
        await caller.hang_up()

    kinds = [type(event).__name__ for event in await call_events(nats_ops, call_sid)]
    assert "CallEnded" in kinds
    assert "CallFailed" not in kinds
    assert not await room_exists(webhook_livekit, f"call_{call_sid}")


async def test_agent_leaving_after_the_caller_hung_up_is_a_normal_end(
    gateway: RunningGateway,
    numbers: Numbers,
    nats_ops: NatsClient,
    webhook_livekit: LiveKitServer,
) -> None:
    call_sid, _, caller, agent = await bridged_call(gateway, numbers, webhook_livekit)
    await caller.hang_up()
    await agent.leave()
    await agent_departure_handled(gateway, "agent_left")

    kinds = [type(event).__name__ for event in await call_events(nats_ops, call_sid)]
    assert "CallFailed" not in kinds


def forged_webhook(body: bytes, api_key: str, secret: str) -> str:
    return (
        api.AccessToken(api_key, secret)
        .with_ttl(timedelta(minutes=5))
        .with_sha256(base64.b64encode(hashlib.sha256(body).digest()).decode())
        .to_jwt()
    )


async def test_forged_or_unsigned_livekit_webhooks_are_refused_and_change_nothing(
    gateway: RunningGateway,
    numbers: Numbers,
    nats_ops: NatsClient,
    webhook_livekit: LiveKitServer,
) -> None:
    """An agent-left event for a live call, posted by someone without the API secret."""
    call_sid, _, caller, agent = await bridged_call(gateway, numbers, webhook_livekit)
    room = f"call_{call_sid}"
    try:
        body = json.dumps(
            {
                "event": "participant_left",
                "id": "EV_forged",
                "room": {"name": room},
                "participant": {"identity": "agent-x", "kind": "AGENT"},
            }
        ).encode()
        key = webhook_livekit.api_key
        attempts = {
            "unsigned": None,
            "wrong secret": forged_webhook(body, key, "not-the-secret-" + "z" * 32),
            "signed for another body": forged_webhook(b"{}", key, webhook_livekit.api_secret),
        }
        for name, token in attempts.items():
            headers = {"content-type": "application/webhook+json"}
            if token is not None:
                headers["authorization"] = token
            answer = await gateway.client.post(LIVEKIT_WEBHOOK_PATH, content=body, headers=headers)
            assert answer.status_code == 401, name
            assert answer.headers["content-type"].startswith("application/problem+json")
        assert webhook_count(gateway, "agent_left") == 0
        await gateway.state.agent_loss.drain(timeout=30)
        assert await room_exists(webhook_livekit, room)
        # The same body, signed with the real secret, is acted on (so the refusals above were
        # about the signature, not the body); the check then finds the agent still there.
        token = forged_webhook(body, key, webhook_livekit.api_secret)
        answer = await gateway.client.post(
            LIVEKIT_WEBHOOK_PATH, content=body, headers={"authorization": token}
        )
        assert answer.status_code == 200
        assert webhook_count(gateway, "agent_left") == 1
        await gateway.state.agent_loss.drain(timeout=30)
        assert await room_exists(webhook_livekit, room)
        kinds = [type(event).__name__ for event in await call_events(nats_ops, call_sid)]
        assert "CallFailed" not in kinds
    finally:
        async with api.LiveKitAPI(
            webhook_livekit.url, webhook_livekit.api_key, webhook_livekit.api_secret
        ) as lk:
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        await caller.hang_up()
        await agent.kill()
