"""A simulated phone call: Twilio's webhooks and LiveKit SIP's participant, played on loopback.

Stand-ins for the two remote edges of a real call, used by `make demo`, the end-to-end tests and
the end-to-end benchmark:

- `TwilioSimulator` posts the webhooks Twilio posts, signed exactly as Twilio signs them (with
  twilio's own `RequestValidator`), and reads the TwiML back.
- `SimulatedCaller` joins the call's LiveKit room the way LiveKit SIP bridges a phone leg: a
  participant of kind SIP with the `sip.*` attributes LiveKit SIP sets. It speaks real audio
  (synthesized with espeak-ng) at real-time pace, hears the agent, and keeps the transcript the
  agent publishes.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
import time
import wave
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import numpy as np
import numpy.typing as npt
from livekit import api, rtc
from twilio.request_validator import RequestValidator

SAMPLE_RATE = 48_000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000
# RMS (16-bit PCM) above which a frame counts as speech rather than silence or comfort noise.
SPEECH_RMS = 300.0


@dataclass(frozen=True)
class TwimlAnswer:
    status_code: int
    body: str
    received_at: float
    elapsed_ms: float

    @property
    def sip_uri(self) -> str | None:
        """The `<Dial><Sip>` URI, if the gateway bridged the call."""
        node = self._root().find("./Dial/Sip")
        return None if node is None or node.text is None else node.text.strip()

    @property
    def spoken(self) -> list[str]:
        """The sentences of `<Say>` elements (a rejection or an apology)."""
        return [(node.text or "").strip() for node in self._root().iter("Say")]

    @property
    def hangs_up(self) -> bool:
        return self._root().find("./Hangup") is not None

    def _root(self) -> ElementTree.Element:
        return ElementTree.fromstring(self.body)  # noqa: S314 - our own gateway's TwiML


def sip_user(sip_uri: str) -> str:
    """The user part of `sip:<user>@host;params` — the CallSid the gateway dialled."""
    match = re.match(r"sips?:([^@]+)@", sip_uri)
    if match is None:
        raise ValueError(f"not a SIP URI: {sip_uri!r}")
    return match.group(1)


@dataclass
class TwilioSimulator:
    """Posts Twilio's voice webhooks to the gateway, signed with the account's auth token.

    `public_base_url` is the URL Twilio was configured with (what the signature covers);
    `gateway_url` is where the gateway actually listens (they differ behind a proxy).
    """

    gateway_url: str
    public_base_url: str
    auth_token: str
    account_sid: str = "AC" + "0" * 32
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=20))

    async def post(self, path: str, params: dict[str, str], *, sign: bool = True) -> TwimlAnswer:
        signature = RequestValidator(self.auth_token).compute_signature(
            self.public_base_url + path, params
        )
        headers = {"X-Twilio-Signature": signature} if sign else {}
        started = time.perf_counter()
        response = await self.client.post(self.gateway_url + path, data=params, headers=headers)
        received = time.perf_counter()
        return TwimlAnswer(
            response.status_code, response.text, received, (received - started) * 1000
        )

    async def incoming(self, call_sid: str, from_number: str, to_number: str) -> TwimlAnswer:
        return await self.post(
            "/api/v1/voice/twilio/incoming",
            {
                "AccountSid": self.account_sid,
                "ApiVersion": "2010-04-01",
                "CallSid": call_sid,
                "CallStatus": "ringing",
                "Direction": "inbound",
                "From": from_number,
                "To": to_number,
                "Called": to_number,
                "Caller": from_number,
            },
        )

    async def status(self, call_sid: str, status: str, duration_seconds: int = 0) -> TwimlAnswer:
        return await self.post(
            "/api/v1/voice/twilio/status",
            {
                "AccountSid": self.account_sid,
                "ApiVersion": "2010-04-01",
                "CallSid": call_sid,
                "CallStatus": status,
                "CallDuration": str(duration_seconds),
                "Direction": "inbound",
            },
        )

    async def aclose(self) -> None:
        await self.client.aclose()


def synthesize(text: str, voice: str = "en-us") -> npt.NDArray[np.int16]:
    """Speech for `text` as 48 kHz mono 16-bit samples, from espeak-ng (a Debian package)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        resampled = Path(tmp) / "48k.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(raw), text], check=True)
        subprocess.run(
            ["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(resampled)],
            check=True,
        )
        with wave.open(str(resampled), "rb") as wav:
            return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).copy()


def rms(pcm: bytes | memoryview) -> float:
    """Loudness of 16-bit PCM samples."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


@dataclass
class HeardSpeech:
    """One stretch of agent audio: when it started and ended (perf_counter seconds)."""

    started_at: float
    ended_at: float | None = None
    # How much of it was loud, by the frames' own lengths (arrival times jitter under load).
    loud_seconds: float = 0.0


@dataclass
class TranscriptLine:
    role: str
    text: str
    at: float


class SimulatedCaller:
    """The caller's side of a phone call, joined to LiveKit as LiveKit SIP would join it."""

    def __init__(
        self,
        *,
        livekit_url: str,
        api_key: str,
        api_secret: str,
        room: str,
        call_sid: str,
        from_number: str,
        to_number: str,
    ) -> None:
        self._url = livekit_url
        self._token = (
            api.AccessToken(api_key, api_secret)
            .with_identity(f"sip_{from_number}")
            .with_name("Phone caller")
            .with_kind("sip")
            .with_attributes(
                {
                    "sip.callID": call_sid,
                    "sip.callStatus": "active",
                    "sip.phoneNumber": from_number,
                    "sip.trunkPhoneNumber": to_number,
                    "sip.twilio.callSid": call_sid,
                    "sip.twilio.accountSid": "AC" + "0" * 32,
                }
            )
            .with_grants(api.VideoGrants(room_join=True, room=room))
            .to_jwt()
        )
        self.room = rtc.Room()
        self.joined_at: float | None = None
        self.speech: list[HeardSpeech] = []
        self.transcript: list[TranscriptLine] = []
        self.agent_left = asyncio.Event()
        self._speech_started = asyncio.Event()
        self._speech_ended = asyncio.Event()
        self._source = rtc.AudioSource(SAMPLE_RATE, 1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self) -> float:
        self.room.on("track_subscribed", self._on_track_subscribed)
        self.room.on("participant_disconnected", self._on_participant_disconnected)
        self.room.register_text_stream_handler("lk.transcription", self._on_transcription)
        await self.room.connect(self._url, self._token)
        track = rtc.LocalAudioTrack.create_audio_track("phone", self._source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        self.joined_at = time.perf_counter()
        return self.joined_at

    async def wait_for_agent_speech(self, timeout: float = 15.0) -> HeardSpeech:
        """Wait until the agent starts speaking; returns that stretch of speech."""
        async with asyncio.timeout(timeout):
            await self._speech_started.wait()
        return self.speech[-1]

    async def wait_until_agent_quiet(self, timeout: float = 30.0) -> HeardSpeech:
        """Wait until the agent's current (or next) stretch of speech has ended."""
        async with asyncio.timeout(timeout):
            await self._speech_started.wait()
            await self._speech_ended.wait()
        return self.speech[-1]

    async def say(self, text: str) -> None:
        """Speak `text` into the call at real-time pace, followed by a short silence."""
        samples = np.concatenate([synthesize(text), np.zeros(SAMPLE_RATE * 7 // 10, np.int16)])
        self.transcript.append(TranscriptLine("caller", text, time.perf_counter()))
        self._speech_started.clear()
        self._speech_ended.clear()
        for start in range(0, len(samples) - SAMPLES_PER_FRAME + 1, SAMPLES_PER_FRAME):
            chunk = samples[start : start + SAMPLES_PER_FRAME]
            frame = rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, SAMPLES_PER_FRAME)
            await self._source.capture_frame(frame)

    async def hang_up(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        _publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._spawn(
                self._listen(rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1))
            )

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            self.agent_left.set()

    def _on_transcription(self, reader: rtc.TextStreamReader, participant_identity: str) -> None:
        async def read() -> None:
            try:
                text = await reader.read_all()
            except rtc.StreamError:
                return  # the call ended mid-line
            if text.strip() and participant_identity != self.room.local_participant.identity:
                self.transcript.append(TranscriptLine("agent", text.strip(), time.perf_counter()))

        self._spawn(read())

    async def _listen(self, stream: rtc.AudioStream) -> None:
        quiet_ms = 0.0
        current: HeardSpeech | None = None
        async for event in stream:
            loud = rms(event.frame.data.cast("B")) >= SPEECH_RMS
            now = time.perf_counter()
            if loud:
                quiet_ms = 0.0
                if current is None:
                    current = HeardSpeech(started_at=now)
                    self.speech.append(current)
                    self._speech_ended.clear()
                    self._speech_started.set()
                current.loud_seconds += event.frame.samples_per_channel / event.frame.sample_rate
            elif current is not None:
                # Frames arrive in the stream's size (10 ms from LiveKit), not the 20 ms we send.
                quiet_ms += 1000 * event.frame.samples_per_channel / event.frame.sample_rate
                # 800 ms of silence ends a stretch of speech (pauses between words are shorter).
                if quiet_ms >= 800:
                    current.ended_at = now - 0.8
                    current = None
                    self._speech_ended.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
