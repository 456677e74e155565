"""Ending and transferring a call: the caller hears the whole last sentence before anything
happens to the call. Runs the worker's call preparation, tool wrapping and agent session with
the offline model, an audio sink that plays at real-time pace, and the Twilio API stand-in."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from livekit import rtc
from livekit.agents.voice import io

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallContext, CallEvent, CallTransferred, DispatchMetadata
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.call import CallState, WorkerRuntime, new_agent, new_session, prepare_call
from voiceagents.worker.events import CallEvents
from voiceagents.worker.offline_model import (
    OfflineRealtimeModel,
    OfflineScript,
    OfflineVoice,
    ScriptBook,
    ScriptToolCall,
    ScriptTurn,
)
from voiceagents.worker.settings import Settings
from voiceagents.worker.speech import PhraseAudio
from voiceagents.worker.standins.twilio_calls import TwilioStandIn
from voiceagents.worker.tools.builtin import call_control
from voiceagents.worker.tools.builtin.call_control import (
    CANNOT_TRANSFER,
    TRANSFER_FAILED,
    CallControl,
)
from voiceagents.worker.tools.discovery import discover, function_specs

pytestmark = pytest.mark.unit

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "f" * 32
GOODBYE = "Thanks for calling, goodbye!"
HANDOFF = "Connecting you to a colleague now."


@dataclass
class Segment:
    starts: float
    duration: float = 0.0
    finished_at: float | None = None
    interrupted: bool = False


class PhoneSpeaker(io.AudioOutput):
    """The caller's ear: plays what it is given at real-time pace, one segment after another,
    and reports each segment's end as a real audio output does."""

    def __init__(self) -> None:
        super().__init__(label="phone", capabilities=io.AudioOutputCapabilities(pause=False))
        self.segments: list[Segment] = []
        self._open: Segment | None = None
        self._timers: dict[int, asyncio.TimerHandle] = {}

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._open is None:
            previous_end = max(
                (s.starts + s.duration for s in self.segments if s.finished_at is None),
                default=0.0,
            )
            self._open = Segment(starts=max(time.monotonic(), previous_end))
            self.segments.append(self._open)
            self.on_playback_started(created_at=time.time())
        self._open.duration += frame.duration

    def flush(self) -> None:
        super().flush()
        segment, self._open = self._open, None
        if segment is None:
            return
        delay = max(0.0, segment.starts + segment.duration - time.monotonic())
        self._timers[id(segment)] = asyncio.get_running_loop().call_later(
            delay, self._finish, segment, False
        )

    def clear_buffer(self) -> None:
        for segment in self.segments:
            if segment.finished_at is None:
                timer = self._timers.pop(id(segment), None)
                if timer is not None:
                    timer.cancel()
                self._finish(segment, True)

    def _finish(self, segment: Segment, interrupted: bool) -> None:
        if segment.finished_at is not None:
            return
        segment.finished_at = time.monotonic()
        segment.interrupted = interrupted
        played = min(segment.duration, segment.finished_at - segment.starts)
        self.on_playback_finished(playback_position=played, interrupted=interrupted)


@dataclass
class Call:
    state: CallState
    session: Any
    speaker: PhoneSpeaker
    events: list[CallEvent]
    control: CallControl


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioStandIn]:
    async with TwilioStandIn(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as stand_in:
        yield stand_in


@pytest.fixture
async def start_call(twilio: TwilioStandIn) -> AsyncIterator[Any]:
    sessions: list[Any] = []

    async def start(
        script: OfflineScript, transfer_number: str | None, *, listen: bool = True
    ) -> Call:
        config = AgentRuntimeConfig(
            agent_id=f"agent-{uuid.uuid4().hex[:8]}",
            org_id="org-1",
            version=1,
            name="Sam",
            system_prompt="You answer the salon's phone.",
            transfer_number=transfer_number,
            tools=[
                # The binding the worker adds to every call for the system tools.
                ToolBinding(
                    agent_tool_id="system-call-control",
                    tool_name="call_control",
                    config={"twilio_api_base_url": twilio.base_url},
                    functions=function_specs(CallControl),
                )
            ],
        )
        mirror = ConfigMirror()
        mirror.apply_agent(config)
        runtime = WorkerRuntime(
            # The worker's own Twilio account (its settings) is what transfers.
            settings=Settings(
                dev_mode=True,
                model="offline",
                twilio_account_sid=ACCOUNT_SID,
                twilio_auth_token=AUTH_TOKEN,
            ),
            mirror=mirror,
            tool_classes=discover(),
            phrases=PhraseAudio(OfflineVoice(), None),
            scripts=ScriptBook(),
        )
        sid = f"CA{uuid.uuid4().hex}"
        twilio.add_call(sid)
        call = CallContext(
            call_sid=sid,
            room=f"call_{sid}",
            org_id="org-1",
            agent_id=config.agent_id,
            agent_version=1,
            from_number="+14155550123",
            to_number="+14155550100",
            started_at=datetime.now(UTC),
        )
        events: list[CallEvent] = []
        state = await prepare_call(
            runtime,
            DispatchMetadata(call=call, grant="grant"),
            nc=None,
            js=None,
            started=0.0,
            events=CallEvents(None, call, on_published=events.append),
        )
        control = state.tools.instances["system-call-control"]
        assert isinstance(control, CallControl)
        session = new_session(OfflineRealtimeModel(script=script, realtime=False), state)
        speaker = PhoneSpeaker()
        if listen:
            session.output.audio = speaker
        sessions.append(session)
        await session.start(new_agent(state))
        return Call(state=state, session=session, speaker=speaker, events=events, control=control)

    yield start
    for session in sessions:
        await session.aclose()


async def test_end_call_plays_the_whole_goodbye_before_the_room_closes(start_call: Any) -> None:
    script = OfflineScript(
        turns=[
            ScriptTurn(
                when="bye",
                tool_calls=[
                    ScriptToolCall(name="end_call", arguments={"reason": "caller said goodbye"})
                ],
                after_tools=GOODBYE,
            )
        ]
    )
    call = await start_call(script, transfer_number=None)
    closed: asyncio.Future[tuple[str, float, list[Segment]]] = (
        asyncio.get_running_loop().create_future()
    )

    async def close_room(room: str) -> None:
        closed.set_result((room, time.monotonic(), list(call.speaker.segments)))

    call.control.close_room = close_room

    await call.session.run(user_input="That's all, bye!")
    room, closed_at, heard = await asyncio.wait_for(closed, 30)

    assert room == call.state.call.room
    [goodbye] = heard
    assert goodbye.duration > 1.0  # the goodbye's audio, all of it
    assert goodbye.finished_at is not None and goodbye.finished_at <= closed_at
    assert not goodbye.interrupted
    lines = [i.text_content for i in call.session.history.items if i.type == "message"]
    assert lines[-1] == GOODBYE


# The caller asks for a person; the model transfers, saying the hand-off sentence after.
TRANSFER_SCRIPT = OfflineScript(
    turns=[
        ScriptTurn(
            when="person",
            tool_calls=[
                ScriptToolCall(
                    name="transfer_to_human", arguments={"reason": "wants to speak to Jo"}
                )
            ],
            after_tools=HANDOFF,
        )
    ]
)


async def test_transfer_updates_the_live_call_after_the_handoff_sentence(
    start_call: Any, twilio: TwilioStandIn
) -> None:
    call = await start_call(TRANSFER_SCRIPT, transfer_number="+14155550199")
    live = twilio.calls[call.state.call.call_sid]

    await call.session.run(user_input="Can I talk to a person please?")
    async with asyncio.timeout(30):
        # The stand-in records the update before it answers; the event follows the answer.
        while not (live.updates and any(isinstance(e, CallTransferred) for e in call.events)):  # noqa: ASYNC110 - the stand-in records, nothing to await
            await asyncio.sleep(0.02)

    [update] = live.updates
    assert update["Twiml"] == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Dial>+14155550199</Dial></Response>'
    )
    [handoff] = call.speaker.segments
    assert handoff.finished_at is not None and not handoff.interrupted
    assert handoff.finished_at <= live.updated_at[0]
    [transferred] = [e for e in call.events if isinstance(e, CallTransferred)]
    assert transferred.to_number == "+14155550199"
    assert transferred.reason == "wants to speak to Jo"
    assert (transferred.outcome, transferred.error) == ("ok", "")


@pytest.fixture
async def hung_twilio() -> AsyncIterator[str]:
    """A Twilio API that takes the request and never answers."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    release.set()
    await runner.cleanup()


@pytest.mark.parametrize("twilio_fails", ["refused", "hung"])
async def test_a_transfer_twilio_does_not_make_is_told_to_the_caller(
    start_call: Any,
    twilio: TwilioStandIn,
    hung_twilio: str,
    monkeypatch: pytest.MonkeyPatch,
    twilio_fails: str,
) -> None:
    call = await start_call(TRANSFER_SCRIPT, transfer_number="+14155550199")
    if twilio_fails == "refused":
        # Credentials Twilio does not accept (401).
        call.control.credentials = ToolCredentials(
            agent_tool_id="system-call-control",
            kind="api_key",
            secrets={"account_sid": ACCOUNT_SID, "auth_token": "0" * 32},
        )
    else:
        call.control.config = {**call.control.config, "twilio_api_base_url": hung_twilio}
        monkeypatch.setattr(call_control, "TWILIO_SECONDS", 0.2)
    told: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_item(event: Any) -> None:
        text = event.item.text_content
        if event.item.role == "assistant" and text != HANDOFF and not told.done():
            told.set_result(text)

    call.session.on("conversation_item_added", on_item)

    await call.session.run(user_input="Can I talk to a person please?")

    assert await asyncio.wait_for(told, 30) == TRANSFER_FAILED
    # The call log gets the attempt as failed, with the error's type and nothing of its text.
    [attempt] = [e for e in call.events if isinstance(e, CallTransferred)]
    assert (attempt.to_number, attempt.reason) == ("+14155550199", "wants to speak to Jo")
    assert attempt.outcome == "failed"
    assert attempt.error == ("TwilioRestException" if twilio_fails == "refused" else "TimeoutError")
    assert not twilio.calls[call.state.call.call_sid].updates


async def test_without_a_transfer_number_the_agent_says_it_cannot_transfer(
    start_call: Any, twilio: TwilioStandIn
) -> None:
    script = OfflineScript(
        turns=[
            ScriptTurn(
                when="person",
                tool_calls=[
                    ScriptToolCall(name="transfer_to_human", arguments={"reason": "billing"})
                ],
                after_tools=HANDOFF,
            )
        ]
    )
    call = await start_call(script, transfer_number=None, listen=False)

    result = await call.session.run(user_input="Put me through to a person.")

    spoken = [e.item.text_content for e in result.events if e.type == "message"]
    assert spoken == [CANNOT_TRANSFER]
    assert not twilio.calls[call.state.call.call_sid].updates


def test_the_system_functions_need_no_scopes_and_are_never_retried() -> None:
    specs = {spec.name: spec for spec in function_specs(CallControl)}
    assert sorted(specs) == ["end_call", "transfer_to_human"]
    assert not any(spec.idempotent or spec.oauth_scopes for spec in specs.values())
    assert specs["end_call"].parameters["required"] == ["reason"]
