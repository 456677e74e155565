"""The simulated phone leg joins LiveKit as LiveKit SIP does, and hears speech as a caller does."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from livekit import api, rtc
from twilio.request_validator import RequestValidator

from voiceagents.devstack.phone import (
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    SimulatedCaller,
    TwimlAnswer,
    rms,
    sip_user,
    synthesize,
)
from voiceagents.devstack.servers import LiveKitServer

pytestmark = pytest.mark.integration


def test_synthesized_speech_is_loud_enough_to_count_as_speech() -> None:
    samples = synthesize("I would like to book a table for two.")
    assert len(samples) > SAMPLE_RATE  # more than a second of speech
    assert rms(samples.tobytes()) > 300
    assert rms(np.zeros(SAMPLES_PER_FRAME, np.int16).tobytes()) == 0.0


def test_twiml_answer_exposes_the_sip_leg_and_sentences() -> None:
    bridged = TwimlAnswer(
        200,
        '<?xml version="1.0" encoding="UTF-8"?><Response><Dial answerOnBridge="true">'
        "<Sip>sip:CA123@sip.example.com;transport=tcp</Sip></Dial></Response>",
        0.0,
        1.0,
    )
    assert bridged.sip_uri == "sip:CA123@sip.example.com;transport=tcp"
    assert sip_user(bridged.sip_uri) == "CA123"
    rejected = TwimlAnswer(
        200, "<Response><Say>Sorry, goodbye.</Say><Hangup/></Response>", 0.0, 1.0
    )
    assert rejected.spoken == ["Sorry, goodbye."]
    assert rejected.hangs_up and rejected.sip_uri is None


def test_signature_matches_what_twilio_validator_accepts() -> None:
    validator = RequestValidator("auth-token")
    params = {"CallSid": "CA1", "To": "+15550100"}
    url = "https://voice.example.com/api/v1/voice/twilio/incoming"
    assert validator.validate(url, params, validator.compute_signature(url, params))


async def test_caller_joins_as_sip_participant_and_hears_the_agent(
    livekit_server: LiveKitServer,
) -> None:
    room_name = f"call_CA{uuid.uuid4().hex}"
    token = (
        api.AccessToken(livekit_server.api_key, livekit_server.api_secret)
        .with_identity("agent-under-test")
        .with_kind("agent")
        .with_grants(api.VideoGrants(room_join=True, room=room_name))
        .to_jwt()
    )
    agent_room = rtc.Room()
    joined: asyncio.Future[rtc.RemoteParticipant] = asyncio.get_running_loop().create_future()
    agent_room.on("participant_connected", lambda p: joined.done() or joined.set_result(p))
    await agent_room.connect(livekit_server.ws_url, token)
    caller = SimulatedCaller(
        livekit_url=livekit_server.ws_url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
        room=room_name,
        call_sid="CA1",
        from_number="+15550001111",
        to_number="+15550002222",
    )
    try:
        await caller.join()
        participant = await asyncio.wait_for(joined, 10)
        assert participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
        assert participant.attributes["sip.phoneNumber"] == "+15550001111"
        assert participant.attributes["sip.twilio.callSid"] == "CA1"

        source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("agent", source)
        await agent_room.local_participant.publish_track(track)
        speech = synthesize("Hello, this is Ava.")
        for start in range(0, len(speech) - SAMPLES_PER_FRAME + 1, SAMPLES_PER_FRAME):
            chunk = speech[start : start + SAMPLES_PER_FRAME].tobytes()
            await source.capture_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, SAMPLES_PER_FRAME))
        silence = np.zeros(SAMPLES_PER_FRAME, np.int16).tobytes()
        heard = await caller.wait_for_agent_speech(timeout=10)
        for _ in range(60):  # 1.2 s of silence ends the stretch of speech
            await source.capture_frame(rtc.AudioFrame(silence, SAMPLE_RATE, 1, SAMPLES_PER_FRAME))
        finished = await caller.wait_until_agent_quiet(timeout=10)
        assert finished is heard
        assert finished.ended_at is not None and finished.ended_at > heard.started_at
    finally:
        await caller.hang_up()
        await agent_room.disconnect()
