"""An incoming call, from Twilio's signed webhook to the LiveKit room and the TwiML answer."""

from __future__ import annotations

import asyncio
from xml.etree import ElementTree

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from livekit import api
from nats.aio.client import Client as NatsClient

from voiceagents.contracts.calls import CallContext, DispatchMetadata
from voiceagents.contracts.codec import decode
from voiceagents.devstack.phone import sip_user
from voiceagents.devstack.servers import LiveKitServer
from voiceagents.gateway.twiml import REJECTIONS

from .conftest import KEY_ID, PUBLIC_BASE_URL, SIGNING_KEY, Numbers, RunningGateway, new_call_sid
from .test_call_events import call_events, settle

pytestmark = pytest.mark.integration


@pytest.fixture
async def livekit(livekit_server: LiveKitServer) -> api.LiveKitAPI:
    return api.LiveKitAPI(livekit_server.url, livekit_server.api_key, livekit_server.api_secret)


async def test_a_bound_number_gets_a_room_a_dispatch_and_sip_twiml(
    gateway: RunningGateway, numbers: Numbers, livekit: api.LiveKitAPI
) -> None:
    number, agent = await gateway.bind(numbers)
    call_sid = new_call_sid()

    answer = await gateway.twilio.incoming(call_sid, "+14155550100", number)

    assert answer.status_code == 200
    root = ElementTree.fromstring(answer.body)  # noqa: S314 - our own gateway's TwiML
    dial = root.find("./Dial")
    assert dial is not None
    assert dial.get("answerOnBridge") == "true"
    assert dial.get("action") == PUBLIC_BASE_URL + "/api/v1/voice/twilio/dial-action"
    sip = root.find("./Dial/Sip")
    assert sip is not None
    assert sip.get("username") == "twilio-trunk"
    assert sip.get("password") == "trunk-password-" + "y" * 12
    assert answer.sip_uri == f"sip:{call_sid}@sip.voice.example.com:5060;transport=tcp"
    assert sip_user(answer.sip_uri) == call_sid

    rooms = await livekit.room.list_rooms(api.ListRoomsRequest(names=[f"call_{call_sid}"]))
    assert len(rooms.rooms) == 1
    context = decode(rooms.rooms[0].metadata, CallContext)
    assert (context.agent_id, context.org_id, context.to_number) == (
        agent.agent_id,
        agent.org_id,
        number,
    )
    dispatches = await livekit.agent_dispatch.list_dispatch(f"call_{call_sid}")
    assert [d.agent_name for d in dispatches] == ["voice-agent"]
    metadata = decode(dispatches[0].metadata, DispatchMetadata)
    assert metadata.call == context

    public_key = Ed25519PrivateKey.from_private_bytes(SIGNING_KEY).public_key()
    assert jwt.get_unverified_header(metadata.grant)["kid"] == KEY_ID
    claims = jwt.decode(metadata.grant, public_key, algorithms=["EdDSA"], audience="tool-vault")
    assert claims["agent_id"] == agent.agent_id
    assert claims["org_id"] == agent.org_id
    assert claims["call_sid"] == call_sid
    assert claims["room"] == f"call_{call_sid}"
    assert claims["exp"] - claims["iat"] == 3600
    await livekit.aclose()


async def test_the_same_call_sid_twice_makes_one_room_one_dispatch_and_the_same_answer(
    gateway: RunningGateway, numbers: Numbers, livekit: api.LiveKitAPI
) -> None:
    number, _ = await gateway.bind(numbers)
    call_sid = new_call_sid()

    first = await gateway.twilio.incoming(call_sid, "+14155550100", number)
    second = await gateway.twilio.incoming(call_sid, "+14155550100", number)

    assert first.body == second.body
    rooms = await livekit.room.list_rooms(api.ListRoomsRequest())
    assert [r.name for r in rooms.rooms].count(f"call_{call_sid}") == 1
    assert len(await livekit.agent_dispatch.list_dispatch(f"call_{call_sid}")) == 1
    await livekit.aclose()


async def test_an_incoming_webhook_after_the_calls_end_hangs_up_and_makes_no_room(
    gateway: RunningGateway, numbers: Numbers, livekit: api.LiveKitAPI
) -> None:
    number, _ = await gateway.bind(numbers)
    call_sid = new_call_sid()

    # Twilio's final status reached this replica before the incoming webhook did.
    assert (await gateway.twilio.status(call_sid, "canceled")).status_code == 200
    late = await gateway.twilio.incoming(call_sid, "+14155550100", number)

    assert late.hangs_up and late.sip_uri is None
    rooms = await livekit.room.list_rooms(api.ListRoomsRequest(names=[f"call_{call_sid}"]))
    assert rooms.rooms == []
    await livekit.aclose()


@pytest.mark.parametrize("reason", ["unknown_number", "inactive_agent", "at_capacity"])
async def test_calls_that_cannot_be_taken_get_a_polite_hang_up(
    gateway: RunningGateway, numbers: Numbers, livekit: api.LiveKitAPI, reason: str
) -> None:
    if reason == "unknown_number":
        number = "+15550000000"
    elif reason == "inactive_agent":
        number, _ = await gateway.bind(numbers, is_active=False)
    else:
        number, _ = await gateway.bind(numbers, max_concurrent_calls=1)
        taken = await gateway.twilio.incoming(new_call_sid(), "+14155550100", number)
        assert taken.sip_uri is not None
    call_sid = new_call_sid()

    answer = await gateway.twilio.incoming(call_sid, "+14155550101", number)

    assert answer.status_code == 200
    assert answer.spoken == [REJECTIONS[reason]]  # type: ignore[index]
    assert answer.hangs_up
    assert answer.sip_uri is None
    rooms = await livekit.room.list_rooms(api.ListRoomsRequest(names=[f"call_{call_sid}"]))
    assert rooms.rooms == []
    await livekit.aclose()


async def test_a_call_that_ended_frees_its_agents_capacity(
    gateway: RunningGateway, numbers: Numbers
) -> None:
    number, _ = await gateway.bind(numbers, max_concurrent_calls=1)
    first = new_call_sid()
    assert (await gateway.twilio.incoming(first, "+14155550100", number)).sip_uri

    await gateway.twilio.status(first, "completed", 12)

    assert (await gateway.twilio.incoming(new_call_sid(), "+14155550100", number)).sip_uri


@pytest.mark.parametrize("forgery", ["unsigned", "wrong_token", "other_url"])
async def test_requests_not_signed_by_twilio_for_this_url_are_refused_with_no_work_done(
    gateway: RunningGateway, numbers: Numbers, livekit: api.LiveKitAPI, forgery: str
) -> None:
    number, _ = await gateway.bind(numbers)
    call_sid = new_call_sid()
    params = {"CallSid": call_sid, "From": "+14155550100", "To": number}
    path = "/api/v1/voice/twilio/incoming"
    if forgery == "unsigned":
        answer = await gateway.twilio.post(path, params, sign=False)
    elif forgery == "wrong_token":
        gateway.twilio.auth_token = "not-the-account-token"
        answer = await gateway.twilio.post(path, params)
    else:
        gateway.twilio.public_base_url = "https://attacker.example.com"
        answer = await gateway.twilio.post(path, params)

    assert answer.status_code == 403
    rooms = await livekit.room.list_rooms(api.ListRoomsRequest(names=[f"call_{call_sid}"]))
    assert rooms.rooms == []
    assert gateway.state.handler.book.get(call_sid) is None
    await livekit.aclose()


async def test_signatures_made_with_the_default_port_are_accepted(
    gateway: RunningGateway, numbers: Numbers
) -> None:
    number, _ = await gateway.bind(numbers)
    gateway.twilio.public_base_url = "https://voice.example.com:443"

    answer = await gateway.twilio.incoming(new_call_sid(), "+14155550100", number)

    assert answer.status_code == 200
    assert answer.sip_uri is not None


@pytest.mark.parametrize("missing", ["CallSid", "To"])
async def test_a_signed_webhook_without_a_call_sid_or_to_is_a_clear_client_error(
    gateway: RunningGateway, missing: str
) -> None:
    call_sid = new_call_sid()
    params = {"CallSid": call_sid, "From": "+14155550100", "To": "+15550000000"}
    del params[missing]

    answer = await gateway.twilio.post("/api/v1/voice/twilio/incoming", params)

    assert answer.status_code == 400
    assert f'"field":"{missing}"' in answer.body
    assert gateway.state.handler.book.get(call_sid) is None
    metrics = (await gateway.client.get("/metrics")).text
    assert 'gateway_webhook_seconds_count{endpoint="incoming",outcome="bad_request"} 1.0' in metrics


async def test_a_call_that_ends_while_its_room_is_being_made_is_not_bridged(
    gateway: RunningGateway,
    numbers: Numbers,
    nats_ops: NatsClient,
    livekit: api.LiveKitAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    number, agent = await gateway.bind(numbers, max_concurrent_calls=1)
    rooms = gateway.state.rooms
    creating, finish = asyncio.Event(), asyncio.Event()
    create = rooms.create

    async def slow_create(call: CallContext, grant: str) -> api.Room:
        creating.set()
        await finish.wait()
        return await create(call, grant)

    monkeypatch.setattr(rooms, "create", slow_create)
    call_sid = new_call_sid()
    incoming = asyncio.create_task(gateway.twilio.incoming(call_sid, "+14155550100", number))
    async with asyncio.timeout(10):
        await creating.wait()

    # The caller hangs up while LiveKit is still making the room.
    assert (await gateway.twilio.status(call_sid, "canceled")).status_code == 200
    finish.set()
    answer = await incoming
    await settle(gateway)

    assert answer.hangs_up and answer.sip_uri is None
    assert await call_events(nats_ops, call_sid) == []
    rooms_left = await livekit.room.list_rooms(api.ListRoomsRequest(names=[f"call_{call_sid}"]))
    assert rooms_left.rooms == []
    assert gateway.state.handler.book.active(agent.agent_id) == 0
    await livekit.aclose()


async def test_the_fallback_url_apologises(gateway: RunningGateway) -> None:
    answer = await gateway.twilio.post(
        "/api/v1/voice/twilio/fallback", {"CallSid": new_call_sid(), "ErrorCode": "11200"}
    )

    assert answer.status_code == 200
    assert answer.hangs_up
    assert answer.spoken and "Sorry" in answer.spoken[0]


async def test_health_readiness_and_metrics(gateway: RunningGateway, numbers: Numbers) -> None:
    number, _ = await gateway.bind(numbers)
    await gateway.twilio.incoming(new_call_sid(), "+14155550100", number)
    await gateway.twilio.incoming(new_call_sid(), "+14155550100", "+15550000001")

    assert (await gateway.client.get("/healthz")).status_code == 200
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    text = (await gateway.client.get("/metrics")).text
    assert 'gateway_webhook_seconds_count{endpoint="incoming",outcome="bridged"} 1.0' in text
    assert "gateway_rooms_created_total 1.0" in text
    assert 'gateway_rejections_total{reason="unknown_number"} 1.0' in text


async def test_readiness_turns_false_when_the_mirrors_watch_stops(
    gateway: RunningGateway, numbers: Numbers
) -> None:
    broken = asyncio.Event()

    def listener(_bucket: str, _key: str) -> None:
        broken.set()  # its waiter runs after the watch task has handled the error
        raise RuntimeError("a bug while applying a change")

    gateway.state.mirror.on_change(listener)
    await numbers.bind()
    async with asyncio.timeout(10):
        await broken.wait()

    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["mirror"] is False
