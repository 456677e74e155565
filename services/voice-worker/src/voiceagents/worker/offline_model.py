"""STAND-IN for Gemini Realtime: an offline realtime model for tests, benchmarks and `make demo`.

It is not a language model. It implements livekit-agents' `RealtimeModel` / `RealtimeSession`
interface — the same one the Gemini plugin implements — so the worker runs exactly the code path
it runs in production, without a Google key or a network:

- it *hears* the caller: energy-based turn detection on the pushed audio (speech starts after a
  few loud frames, a turn ends after a stretch of silence), with the usual speech-started /
  speech-stopped / transcription events;
- it *follows a script* (`OfflineScript`): each caller turn picks the next scripted turn, or the
  turn whose keyword (`when`) appears in the caller's words (text mode, or the scripted `caller`
  line in audio mode); a turn says a sentence and/or calls tools, then answers with the tools'
  results (`{result}`: their text; `{answer}`: the caller-ready `answer` a built-in tool
  returns, as a real model would phrase it); a tool result with `say_to_caller` is spoken as
  given; a turn
  that needs a function the model was not given says it cannot do that, as a model would;
- it *speaks* synthetic voiced audio at real-time pace after a configurable time-to-first-audio,
  and emits the text of what it says as the transcript.

Selected with `VA_WORKER_MODEL=offline`; the script comes from `VA_WORKER_OFFLINE_SCRIPT` (a JSON
`ScriptBook`: a default script and optional per-agent scripts) or the built-in demo script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import zlib
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
from livekit import rtc
from livekit.agents import llm, utils
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from voiceagents.worker.speech import FRAME_MS, frames

SAMPLE_RATE = 24_000

# Turn detection on 16-bit PCM loudness.
SPEECH_RMS = 400.0
SPEECH_START_FRAMES = 3
DEFAULT_END_OF_TURN_MS = 600.0

# Said instead of calling a function that is not in the model's tool list (unselected, unbound).
CANNOT_DO_SENTENCE = (
    "I'm sorry, I can't do that on this call. Is there anything else I can help you with?"
)


class ScriptToolCall(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: dict[str, Any] = {}


class ScriptTurn(msgspec.Struct, frozen=True, kw_only=True):
    """One exchange: what the caller is taken to say, and what the model does."""

    # A keyword that selects this turn when it appears in the caller's words; None: in order.
    when: str | None = None
    # The caller's words for this turn when only audio was heard (the transcript).
    caller: str = ""
    say: str = ""
    tool_calls: list[ScriptToolCall] = []
    # Spoken after the tool results are back; `{result}` is their text, `{answer}` their
    # `answer` field (the text where there is none).
    after_tools: str = "{result}"


class OfflineScript(msgspec.Struct, frozen=True, kw_only=True):
    turns: list[ScriptTurn] = []
    # Said when no scripted turn is left or matches.
    fallback: str = "Sorry, I didn't catch that. Could you say it again?"


class ScriptBook(msgspec.Struct, frozen=True, kw_only=True):
    """Scripts by agent id, with a default for every other agent."""

    default: OfflineScript = OfflineScript()
    agents: dict[str, OfflineScript] = {}

    def for_agent(self, agent_id: str) -> OfflineScript:
        return self.agents.get(agent_id, self.default)


DEMO_SCRIPT = OfflineScript(
    turns=[
        ScriptTurn(
            when="time",
            caller="What time is it?",
            tool_calls=[ScriptToolCall(name="current_time")],
            after_tools="It is {result} right now.",
        ),
        ScriptTurn(when="bye", caller="Thanks, bye!", say="Thank you for calling. Goodbye!"),
    ]
)


def load_script_book(path: str | None) -> ScriptBook:
    """The script book in `path` (JSON), or the built-in demo script for every agent."""
    if not path:
        return ScriptBook(default=DEMO_SCRIPT)
    return msgspec.json.decode(Path(path).read_bytes(), type=ScriptBook)


def synthesize(text: str, voice: str) -> bytes:
    """Voiced-sounding 16-bit mono PCM at 24 kHz for `text`: one tone per word, pitch from the
    voice name. Deterministic, so the same phrase in the same voice is the same audio."""
    base = 110.0 + zlib.crc32(voice.encode()) % 90
    pieces: list[np.ndarray[Any, np.dtype[np.int16]]] = []
    for index, word in enumerate(text.split()):
        duration = 0.12 + 0.045 * len(word)
        t = np.arange(int(SAMPLE_RATE * duration)) / SAMPLE_RATE
        pitch = base * (1.0 + 0.08 * ((index % 3) - 1))
        wave = sum(np.sin(2 * math.pi * pitch * k * t) / k for k in (1, 2, 3))
        envelope = np.minimum(1.0, np.minimum(t, duration - t) / 0.02)
        pieces.append((wave * envelope * 6000).astype(np.int16))
        pieces.append(np.zeros(int(SAMPLE_RATE * 0.06), dtype=np.int16))
    if not pieces:
        return b""
    return np.concatenate(pieces).tobytes()


def rms(frame: rtc.AudioFrame) -> float:
    samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


class OfflineRealtimeModel(llm.RealtimeModel):
    """STAND-IN realtime model; see the module docstring."""

    def __init__(
        self,
        *,
        script: OfflineScript,
        voice: str = "Puck",
        first_audio_ms: float = 300.0,
        end_of_turn_ms: float = DEFAULT_END_OF_TURN_MS,
        realtime: bool = True,
    ) -> None:
        super().__init__(
            capabilities=llm.RealtimeCapabilities(
                message_truncation=False,
                turn_detection=True,
                user_transcription=True,
                auto_tool_reply_generation=False,
                audio_output=True,
                manual_function_calls=False,
                mutable_chat_context=True,
                mutable_instructions=True,
                mutable_tools=True,
            )
        )
        self.script = script
        self.voice = voice
        self.first_audio_ms = first_audio_ms
        self.end_of_turn_ms = end_of_turn_ms
        # False: audio is produced as fast as it is read (text-mode tests).
        self.realtime = realtime
        self.sessions: list[OfflineRealtimeSession] = []

    @property
    def model(self) -> str:
        return "offline-stand-in"

    @property
    def provider(self) -> str:
        return "voiceagents"

    def session(self, *, turn_detection_disabled: bool = False) -> OfflineRealtimeSession:
        session = OfflineRealtimeSession(self)
        self.sessions.append(session)
        return session

    async def aclose(self) -> None:
        for session in self.sessions:
            await session.aclose()


class OfflineRealtimeSession(llm.RealtimeSession[Any]):
    def __init__(self, model: OfflineRealtimeModel) -> None:
        super().__init__(model)
        self._model = model
        self._chat_ctx = llm.ChatContext.empty()
        self._tools = llm.ToolContext.empty()
        self.instructions = ""
        self._next_turn = 0
        self._current_turn: ScriptTurn | None = None
        self._generation: asyncio.Task[None] | None = None
        self._closed = False
        # Turn detection state.
        self._loud_frames = 0
        self._speaking = False
        self._quiet_ms = 0.0

    # -- what the model was given (tests read these) ---------------------------------------

    @property
    def chat_ctx(self) -> llm.ChatContext:
        return self._chat_ctx.copy()

    @property
    def tools(self) -> llm.ToolContext:
        return self._tools.copy()

    async def update_instructions(self, instructions: str) -> None:
        self.instructions = instructions

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        self._chat_ctx = chat_ctx.copy()

    async def update_tools(self, tools: list[llm.Tool]) -> None:
        self._tools = llm.ToolContext(tools)

    def update_options(self, *, tool_choice: NotGivenOr[llm.ToolChoice | None] = NOT_GIVEN) -> None:
        return None

    # -- hearing ---------------------------------------------------------------------------

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        frame_ms = 1000.0 * frame.samples_per_channel / frame.sample_rate
        if rms(frame) >= SPEECH_RMS:
            self._loud_frames += 1
            self._quiet_ms = 0.0
            if not self._speaking and self._loud_frames >= SPEECH_START_FRAMES:
                self._speaking = True
                self.emit("input_speech_started", llm.InputSpeechStartedEvent())
            return
        self._loud_frames = 0
        if self._speaking:
            self._quiet_ms += frame_ms
            if self._quiet_ms >= self._model.end_of_turn_ms:
                self._speaking = False
                self._caller_turn_ended()

    def push_video(self, frame: rtc.VideoFrame) -> None:
        return None

    def commit_audio(self) -> None:
        return None

    def clear_audio(self) -> None:
        self._loud_frames = 0
        self._speaking = False

    def _caller_turn_ended(self) -> None:
        self.emit(
            "input_speech_stopped", llm.InputSpeechStoppedEvent(user_transcription_enabled=True)
        )
        turn = self._pick_turn(None)
        heard = turn.caller if turn is not None and turn.caller else "(caller speech)"
        self.emit(
            "input_audio_transcription_completed",
            llm.InputTranscriptionCompleted(
                item_id=utils.shortuuid("offline_in_"), transcript=heard, is_final=True
            ),
        )
        self._start(self._turn_reply(turn), user_initiated=None)

    # -- speaking --------------------------------------------------------------------------

    def generate_reply(
        self,
        *,
        instructions: NotGivenOr[str] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        tools: NotGivenOr[list[llm.Tool]] = NOT_GIVEN,
    ) -> asyncio.Future[llm.GenerationCreatedEvent]:
        future: asyncio.Future[llm.GenerationCreatedEvent] = asyncio.Future()
        last = self._chat_ctx.items[-1] if self._chat_ctx.items else None
        # The worker's own "Say exactly:" (a greeting without audio, a failed transfer) comes
        # first, as a real model follows the instructions of the reply it is asked for.
        if utils.is_given(instructions) and "Say exactly:" in instructions:
            reply: tuple[str, list[ScriptToolCall]] = (
                instructions.split("Say exactly:", 1)[1].strip(),
                [],
            )
        elif isinstance(last, llm.FunctionCallOutput):
            reply = (self._after_tools(), [])
        elif isinstance(last, llm.ChatMessage) and last.role == "user":
            reply = self._turn_reply(self._pick_turn(last.text_content or ""))
        else:
            reply = (self._model.script.fallback, [])
        self._start(reply, user_initiated=future)
        return future

    def _pick_turn(self, heard: str | None) -> ScriptTurn | None:
        turns = self._model.script.turns
        if heard:
            for turn in turns:
                if turn.when and turn.when.lower() in heard.lower():
                    self._current_turn = turn
                    return turn
        if self._next_turn < len(turns):
            turn = turns[self._next_turn]
            self._next_turn += 1
            self._current_turn = turn
            return turn
        self._current_turn = None
        return None

    def _turn_reply(self, turn: ScriptTurn | None) -> tuple[str, list[ScriptToolCall]]:
        if turn is None:
            return self._model.script.fallback, []
        given = self._tools.function_tools
        if any(call.name not in given for call in turn.tool_calls):
            return CANNOT_DO_SENTENCE, []
        return turn.say, list(turn.tool_calls)

    def _after_tools(self) -> str:
        results: list[str] = []
        for item in reversed(self._chat_ctx.items):
            if not isinstance(item, llm.FunctionCallOutput):
                break
            results.insert(0, item.output)
        spoken: list[str] = []
        answers: list[str] = []
        for result in results:
            try:
                decoded = json.loads(result)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict) and isinstance(decoded.get("say_to_caller"), str):
                # A failed tool: say exactly what the worker gave for the caller.
                return str(decoded["say_to_caller"])
            spoken.append(result)
            answer = decoded.get("answer") if isinstance(decoded, dict) else None
            answers.append(answer if isinstance(answer, str) else result)
        template = self._current_turn.after_tools if self._current_turn else "{result}"
        return template.replace("{result}", " ".join(spoken)).replace("{answer}", " ".join(answers))

    def _start(
        self,
        reply: tuple[str, list[ScriptToolCall]],
        *,
        user_initiated: asyncio.Future[llm.GenerationCreatedEvent] | None,
    ) -> None:
        text, tool_calls = reply
        self.interrupt()
        message_ch = utils.aio.Chan[llm.MessageGeneration]()
        function_ch = utils.aio.Chan[llm.FunctionCall]()
        text_ch = utils.aio.Chan[str]()
        audio_ch = utils.aio.Chan[rtc.AudioFrame]()
        modalities: asyncio.Future[list[Literal["text", "audio"]]] = asyncio.Future()
        modalities.set_result(["audio", "text"])
        response_id = utils.shortuuid("offline_")
        message_ch.send_nowait(
            llm.MessageGeneration(
                message_id=response_id,
                text_stream=text_ch,
                audio_stream=audio_ch,
                modalities=modalities,
            )
        )
        message_ch.close()
        for call in tool_calls:
            function_ch.send_nowait(
                llm.FunctionCall(
                    call_id=utils.shortuuid("offline_call_"),
                    name=call.name,
                    arguments=json.dumps(call.arguments),
                )
            )
        function_ch.close()
        event = llm.GenerationCreatedEvent(
            message_stream=message_ch,
            function_stream=function_ch,
            user_initiated=user_initiated is not None,
            response_id=response_id,
        )
        self._generation = asyncio.create_task(self._speak(text, text_ch, audio_ch))
        if user_initiated is not None:
            user_initiated.set_result(event)
        else:
            self.emit("generation_created", event)

    async def _speak(
        self, text: str, text_ch: utils.aio.Chan[str], audio_ch: utils.aio.Chan[rtc.AudioFrame]
    ) -> None:
        try:
            if text:
                text_ch.send_nowait(text)
            text_ch.close()
            if not text:
                return
            if self._model.realtime:
                await asyncio.sleep(self._model.first_audio_ms / 1000)
            async for frame in frames(synthesize(text, self._model.voice), SAMPLE_RATE):
                audio_ch.send_nowait(frame)
                if self._model.realtime:
                    await asyncio.sleep(FRAME_MS / 1000)
        finally:
            text_ch.close()
            audio_ch.close()

    def interrupt(self) -> None:
        if self._generation is not None and not self._generation.done():
            self._generation.cancel()
        self._generation = None

    def truncate(
        self,
        *,
        message_id: str,
        modalities: list[Literal["text", "audio"]],
        audio_end_ms: int,
        audio_transcript: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        return None

    async def aclose(self) -> None:
        self._closed = True
        if self._generation is not None:
            self._generation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._generation


class OfflineVoice:
    """STAND-IN phrase renderer: the offline model's own synthetic voice."""

    cache_key = "offline-voice-v1"

    async def render(self, text: str, voice: str) -> tuple[int, bytes]:
        return SAMPLE_RATE, synthesize(text, voice)
