"""A whole call through a real LiveKit server and the real worker process, with a caller that
joins as LiveKit SIP does and speaks and listens in real audio (the model is the offline
stand-in). What a caller would notice: the exact greeting first — also when they join after the
agent is ready —, a tool answer, a worker that never takes more than MAX_CALLS calls, and a
SIGTERM that lets the running call finish. Nothing secret shows up in logs or events."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import httpx
import numpy as np
import pytest
from livekit import api

from voiceagents.contracts.agents import ToolBinding
from voiceagents.contracts.calls import AgentJoined, CallEnded, ToolInvoked, TranscriptTurn
from voiceagents.contracts.tools import ToolFunctionSpec
from voiceagents.devstack.phone import SPEECH_RMS
from voiceagents.devstack.servers import LiveKitServer
from voiceagents.worker.offline_model import (
    SAMPLE_RATE,
    OfflineScript,
    ScriptToolCall,
    ScriptTurn,
    synthesize,
)
from voiceagents.worker.tools.execution import UNAVAILABLE_SENTENCE

pytestmark = pytest.mark.integration

GREETING = "Hi, this is Ada from the shop. How can I help?"

SCRIPT = OfflineScript(
    turns=[
        ScriptTurn(
            caller="Where is my order five?",
            tool_calls=[ScriptToolCall(name="lookup_order", arguments={"order_id": "5"})],
            after_tools="Order five has shipped.",
        ),
        ScriptTurn(caller="Thanks, bye.", say="You're welcome, goodbye!"),
    ]
)

ORDERS_ONLY = [
    ToolBinding(
        agent_tool_id="at-orders",
        tool_name="orders",
        auth_type="api_key",
        functions=[ToolFunctionSpec(name="lookup_order", description="")],
    )
]


def agent_lines(events: Any, call_sid: str) -> list[str]:
    """The agent's lines as the call records them (transcript events), in order."""
    return [
        e.entry.text
        for e in events.events
        if isinstance(e, TranscriptTurn) and e.call_sid == call_sid and e.entry.role == "agent"
    ]


async def test_a_caller_joining_late_hears_the_exact_greeting_first_then_a_tool_answer(
    start_worker: Any,
    place_call: Any,
    agent_in_kv: Any,
    make_config: Any,
    call_events: Any,
    toolvault: Any,
    planted_secret: str,
) -> None:
    config = await agent_in_kv(make_config(tools=ORDERS_ONLY))
    worker = await start_worker(SCRIPT, max_calls="2")
    placed = await place_call(config, worker.agent_name)
    sid = placed.call.call_sid

    # The worker is ready (config, credentials, tools) before the caller's leg arrives.
    joined = await call_events.wait_for(AgentJoined, sid)
    assert joined.setup_ms > 0
    caller = placed.caller
    await caller.join()
    await caller.wait_until_agent_quiet()
    await wait_for_agent_lines(call_events, sid, 1)
    await caller.say("Where is my order five?")
    await caller.wait_until_agent_quiet()
    await wait_for_agent_lines(call_events, sid, 2)
    await caller.hang_up()
    ended = await call_events.wait_for(CallEnded, sid)

    assert agent_lines(call_events, sid) == [GREETING, "Order five has shipped."]
    invoked = await call_events.wait_for(ToolInvoked, sid)
    assert (invoked.function, invoked.outcome) == ("lookup_order", "ok")
    assert toolvault.requests[-1].agent_tool_ids == ["at-orders"]
    assert ended.source == "worker"
    assert ended.ended_by == "caller"
    assert [(line.role, line.text) for line in ended.transcript][:1] == [("agent", GREETING)]
    # Planted-secret scan: the API key was released to the call and used by the tool.
    assert planted_secret not in worker.log()
    assert not [raw for raw in call_events.raw if planted_secret.encode() in raw]


async def test_the_agents_voice_is_in_the_room_before_the_caller_who_hears_all_of_the_greeting(
    start_worker: Any,
    place_call: Any,
    agent_in_kv: Any,
    make_config: Any,
    call_events: Any,
    livekit_server: LiveKitServer,
) -> None:
    config = await agent_in_kv(make_config(tools=ORDERS_ONLY))
    worker = await start_worker(SCRIPT)
    placed = await place_call(config, worker.agent_name)
    await call_events.wait_for(AgentJoined, placed.call.call_sid)
    room = placed.call.room
    async with asyncio.timeout(10):  # the server API has no event for a published track
        while not (tracks := await agent_audio_tracks(livekit_server, room)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await placed.caller.join()
    heard = await placed.caller.wait_until_agent_quiet()

    assert [track.name for track in tracks] == ["agent_voice"]  # there before the caller
    # None of it is lost to the join, where a clipped start loses a first word (>= 250 ms).
    # The codec smears word edges, so a few more frames than rendered count as loud (2.96 s
    # heard for 2.92 s rendered, quiet machine); under CPU starvation the caller's jitter
    # buffer shortens it by up to ~70 ms (2.85 s), which loses no word.
    assert heard.loud_seconds >= loud_seconds(GREETING, config.voice) - 0.12


def loud_seconds(text: str, voice: str) -> float:
    """How much of the offline voice's rendering of `text` is loud, in 10 ms frames."""
    samples = np.frombuffer(synthesize(text, voice), dtype=np.int16).astype(np.float32)
    frame = SAMPLE_RATE // 100
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
    loud = np.sqrt((frames * frames).mean(axis=1)) >= SPEECH_RMS
    return float(loud.sum()) / 100


async def wait_for_agent_lines(events: Any, call_sid: str, count: int) -> None:
    async with asyncio.timeout(30):
        while len(agent_lines(events, call_sid)) < count:
            events.changed.clear()
            await events.changed.wait()


async def test_a_full_worker_gets_no_more_calls_and_sigterm_lets_the_running_call_finish(
    start_worker: Any,
    place_call: Any,
    agent_in_kv: Any,
    make_config: Any,
    call_events: Any,
    toolvault: Any,
    livekit_server: LiveKitServer,
) -> None:
    config = await agent_in_kv(make_config(tools=ORDERS_ONLY))
    worker = await start_worker(SCRIPT, max_calls="1")
    first = await place_call(config, worker.agent_name)
    await first.caller.join()
    await first.caller.wait_until_agent_quiet()

    second = await place_call(config, worker.agent_name)
    await wait_for_turn_down(worker, livekit_server, turn_downs(worker, livekit_server))
    assert not await agents_in(livekit_server, second.call.room)

    worker.process.send_signal(signal.SIGTERM)
    await worker.wait_for_log('"draining worker"')
    seen = turn_downs(worker, livekit_server)
    third = await place_call(config, worker.agent_name)
    await wait_for_turn_down(worker, livekit_server, seen)
    assert not await agents_in(livekit_server, third.call.room)
    await first.caller.say("Where is my order five?")
    await first.caller.wait_until_agent_quiet()
    await wait_for_agent_lines(call_events, first.call.call_sid, 2)
    await first.caller.hang_up()

    assert await worker.process.wait() == 0
    assert agent_lines(call_events, first.call.call_sid) == [GREETING, "Order five has shipped."]
    ended = await call_events.wait_for(CallEnded, first.call.call_sid)
    assert ended.ended_by == "caller"


def turn_downs(worker: Any, livekit: LiveKitServer) -> int:
    """Jobs for this worker's agent name that LiveKit could not place (the worker reported
    itself full or draining) or that the worker refused."""
    server_log = (livekit.data_root / "livekit.log").read_text(errors="replace")
    not_offered = [
        line
        for line in server_log.splitlines()
        if "failed to send job request" in line and worker.agent_name in line
    ]
    refused = [line for line in worker.log().splitlines() if '"job refused"' in line]
    return len(not_offered) + len(refused)


async def wait_for_turn_down(worker: Any, livekit: LiveKitServer, seen: int) -> None:
    async with asyncio.timeout(30):
        while turn_downs(worker, livekit) <= seen:  # noqa: ASYNC110 - logs have no event
            await asyncio.sleep(0.05)


async def agent_participants(livekit: LiveKitServer, room: str) -> list[api.ParticipantInfo]:
    lkapi = api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret)
    try:
        response = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    finally:
        await lkapi.aclose()
    return [p for p in response.participants if p.kind == api.ParticipantInfo.Kind.AGENT]


async def delete_room(livekit: LiveKitServer, room: str) -> None:
    """As the gateway does when the phone leg ends."""
    lkapi = api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret)
    try:
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
    finally:
        await lkapi.aclose()


async def agent_audio_tracks(livekit: LiveKitServer, room: str) -> list[api.TrackInfo]:
    return [
        track
        for p in await agent_participants(livekit, room)
        for track in p.tracks
        if track.type == api.TrackType.AUDIO
    ]


async def agents_in(livekit: LiveKitServer, room: str) -> list[str]:
    return [p.identity for p in await agent_participants(livekit, room)]


# Test tools plus the built-in system tool (end_call).
WITH_CALL_CONTROL = "voice_worker_test_tools,voiceagents.worker.tools.builtin.call_control"


async def test_without_tool_vault_the_call_greets_explains_and_the_agent_ends_it(
    start_worker: Any,
    place_call: Any,
    agent_in_kv: Any,
    make_config: Any,
    call_events: Any,
) -> None:
    # NATS is up but nobody answers toolvault.v1.release: the orders tool gets no API key.
    config = await agent_in_kv(make_config(tools=ORDERS_ONLY))
    script = OfflineScript(
        turns=[
            ScriptTurn(
                caller="Where is my order five?",
                tool_calls=[ScriptToolCall(name="lookup_order", arguments={"order_id": "5"})],
            ),
            ScriptTurn(
                caller="Thanks, bye.",
                tool_calls=[ScriptToolCall(name="end_call", arguments={"reason": "caller done"})],
                after_tools="Goodbye!",
            ),
        ]
    )
    worker = await start_worker(script, tool_packages=WITH_CALL_CONTROL)
    placed = await place_call(config, worker.agent_name)
    sid = placed.call.call_sid
    caller = placed.caller
    await caller.join()
    await caller.wait_until_agent_quiet()
    await wait_for_agent_lines(call_events, sid, 1)
    await caller.say("Where is my order five?")
    await caller.wait_until_agent_quiet()
    await wait_for_agent_lines(call_events, sid, 2)
    await caller.say("Thanks, bye.")
    ended = await call_events.wait_for(CallEnded, sid)

    assert agent_lines(call_events, sid)[:2] == [GREETING, UNAVAILABLE_SENTENCE]
    invoked = [e for e in call_events.events if isinstance(e, ToolInvoked) and e.call_sid == sid]
    assert [(e.function, e.outcome) for e in invoked] == [
        ("lookup_order", "unavailable"),
        ("end_call", "ok"),
    ]
    assert (ended.ended_by, ended.reason, ended.status) == ("agent", "caller done", "completed")
    assert [(line.role, line.text) for line in ended.transcript][:1] == [("agent", GREETING)]


async def test_a_room_deleted_under_a_live_call_ends_the_call_at_once(
    start_worker: Any,
    place_call: Any,
    agent_in_kv: Any,
    make_config: Any,
    call_events: Any,
    livekit_server: LiveKitServer,
) -> None:
    # As when the gateway deletes the room because the phone leg ended: the agent may be told
    # its room is gone before (or instead of) the caller leaving, and must still end the call.
    config = await agent_in_kv(make_config(tools=ORDERS_ONLY))
    worker = await start_worker(SCRIPT)
    placed = await place_call(config, worker.agent_name)
    sid = placed.call.call_sid
    await placed.caller.join()
    await placed.caller.wait_until_agent_quiet()
    await wait_for_agent_lines(call_events, sid, 1)

    await delete_room(livekit_server, placed.call.room)
    # livekit-agents would cancel a call still waiting for its session after 15 s, with no end.
    ended = await call_events.wait_for(CallEnded, sid, timeout=10.0)

    assert ended.status == "completed"
    assert (ended.ended_by, ended.reason) in {
        ("system", "room_closed"),
        ("caller", "participant_disconnected"),
    }
    assert [(line.role, line.text) for line in ended.transcript][:1] == [("agent", GREETING)]


async def test_a_caller_hanging_up_before_their_leg_joins_is_an_early_end_not_a_failure(
    start_worker: Any,
    place_call: Any,
    agent_in_kv: Any,
    make_config: Any,
    call_events: Any,
    livekit_server: LiveKitServer,
) -> None:
    # The caller hangs up while Twilio is still connecting the SIP leg: the gateway deletes
    # the room with the worker waiting for the caller.
    config = await agent_in_kv(make_config(tools=ORDERS_ONLY))
    worker = await start_worker(SCRIPT)
    placed = await place_call(config, worker.agent_name)
    sid = placed.call.call_sid
    await call_events.wait_for(AgentJoined, sid)
    async with asyncio.timeout(10):  # the server API has no event for a published track
        while not await agent_audio_tracks(livekit_server, placed.call.room):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    await delete_room(livekit_server, placed.call.room)
    ended = await call_events.wait_for(CallEnded, sid)

    assert (ended.status, ended.ended_by, ended.reason) == (
        "completed",
        "system",
        "room_closed_before_caller",
    )
    assert ended.transcript == []
    await worker.wait_for_log('"room closed before the caller joined"')
    assert '"call failed"' not in worker.log()


async def test_health_and_a_job_process_killed_mid_call_ends_the_call_as_failed(
    start_worker: Any,
    place_call: Any,
    agent_in_kv: Any,
    make_config: Any,
    call_events: Any,
    toolvault: Any,
) -> None:
    config = await agent_in_kv(make_config(tools=ORDERS_ONLY))
    worker = await start_worker(SCRIPT)
    health = f"http://127.0.0.1:{worker.metrics_port}"
    async with httpx.AsyncClient(base_url=health) as http:
        assert (await http.get("/healthz")).status_code == 200
        async with asyncio.timeout(30):
            while (ready := await http.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert ready.json()["checks"] == {
            "nats": True,
            "config_mirror": True,
            "not_draining": True,
        }
        exposed = (await http.get("/metrics")).text
        assert "lk_agents_worker_load" in exposed
        assert "\ncapacity 4.0\n" in exposed

        placed = await place_call(config, worker.agent_name)
        await placed.caller.join()
        await placed.caller.wait_until_agent_quiet()
        await wait_for_agent_lines(call_events, placed.call.call_sid, 1)
        os.kill(call_pid(worker, placed.call.call_sid), signal.SIGKILL)
        ended = await call_events.wait_for(CallEnded, placed.call.call_sid)

        assert (ended.status, ended.ended_by, ended.reason, ended.source) == (
            "failed",
            "system",
            "failed",
            "worker",
        )


def call_pid(worker: Any, call_sid: str) -> int:
    """The job process running `call_sid`, from its "call ready" log line."""
    for line in worker.log().splitlines():
        if '"call ready"' in line and call_sid in line:
            return int(json.loads(line)["pid"])
    raise AssertionError(f"no call ready line for {call_sid}")
