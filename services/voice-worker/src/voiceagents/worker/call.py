"""One phone call, from dispatch to hang-up.

The moment a job starts, the worker prepares everything the call needs — the agent's runtime
config from memory, the tools' credentials from tool-vault, the tool list, the greeting audio,
the model session, the agent's audio track — while LiveKit SIP is still bridging the caller.
When the caller's SIP participant joins, the greeting plays at once, first and word for word.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import msgspec
import structlog
from livekit import rtc
from livekit.agents import (
    Agent,
    AgentSession,
    JobContext,
    RunContext,
    TurnHandlingOptions,
    llm,
    room_io,
)
from livekit.agents.voice import events as voice_events
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from voiceagents.contracts import bus
from voiceagents.contracts.agents import AGENT_CONFIG_BUCKET, AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallContext, CallStatus, DispatchMetadata, EndedBy
from voiceagents.contracts.codec import decode
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.credentials import CallCredentials, release_credentials
from voiceagents.worker.events import CallEvents
from voiceagents.worker.gemini import GeminiVoice, gemini_realtime_model
from voiceagents.worker.metrics import CALL_SETUP_SECONDS, TOOL_CALLS
from voiceagents.worker.offline_model import (
    OfflineRealtimeModel,
    OfflineVoice,
    ScriptBook,
    load_script_book,
)
from voiceagents.worker.settings import Settings
from voiceagents.worker.speech import Phrase, PhraseAudio
from voiceagents.worker.tools.base import BaseTool
from voiceagents.worker.tools.discovery import discover
from voiceagents.worker.tools.execution import ToolInvocation, ToolRunner
from voiceagents.worker.tools.http import HttpToolExecutor
from voiceagents.worker.tools.ssrf import guarded_client
from voiceagents.worker.tools.system import END_CALL_FUNCTION, system_bindings, with_system_tools
from voiceagents.worker.tools.toolbox import CallTools, build_call_tools

log = structlog.get_logger("voiceagents.worker.call")

CALLER_KINDS = [rtc.ParticipantKind.PARTICIPANT_KIND_SIP]
# The `ended` reason when the room went away before the caller's leg joined: they hung up while
# it was connecting (the gateway then deletes the room), or the leg never connected.
ROOM_CLOSED_BEFORE_CALLER = "room_closed_before_caller"
NATS_CONNECT_SECONDS = 2.0
# The realtime model detects the caller's turns (Gemini server-side VAD; the stand-in's energy
# detector): no local VAD or turn-detector model is loaded.
TURN_HANDLING: TurnHandlingOptions = {"turn_detection": "realtime_llm"}
ROOM_OPTIONS = room_io.RoomOptions(
    participant_kinds=CALLER_KINDS,
    close_on_disconnect=True,
    # The agent's voice is `AgentVoiceTrack`, published before the caller is there.
    audio_output=False,
    # A phone caller sees no captions: pacing the transcript to the audio (an STFT per frame)
    # would only cost CPU, a call's scarcest resource.
    text_output=room_io.TextOutputOptions(sync_transcription=False),
)


class CallRefused(Exception):
    """The call cannot be served (unknown or inactive agent); the message says why."""


@dataclass
class WorkerRuntime:
    """What a job process holds before any call arrives (filled by prewarm)."""

    settings: Settings
    mirror: ConfigMirror
    tool_classes: dict[str, type[BaseTool]]
    phrases: PhraseAudio
    scripts: ScriptBook | None = None
    # One SSRF-guarded client per process for declarative HTTP tools; built at prewarm (making
    # its TLS context takes ~100 ms, which must not land on a call).
    http: HttpToolExecutor | None = None

    @cached_property
    def system_bindings(self) -> list[ToolBinding]:
        """The system tools every call gets (end call, transfer), built once per process."""
        return system_bindings(self.tool_classes)

    @classmethod
    def create(cls, settings: Settings, mirror: ConfigMirror) -> WorkerRuntime:
        offline = settings.model == "offline"
        renderer = (
            OfflineVoice() if offline else GeminiVoice(api_key=settings.google_api_key or None)
        )
        runtime = cls(
            settings=settings,
            mirror=mirror,
            tool_classes=discover(settings.packages),
            phrases=PhraseAudio(renderer, settings.phrase_cache),
            scripts=load_script_book(settings.offline_script) if offline else None,
            http=HttpToolExecutor(guarded_client()),
        )
        runtime.system_bindings  # noqa: B018 - built now, at prewarm, not on the first call
        return runtime

    def model(self, state: CallState) -> llm.RealtimeModel:
        config = state.config
        if self.scripts is not None:
            return OfflineRealtimeModel(
                script=self.scripts.for_agent(config.agent_id),
                voice=config.voice,
                first_audio_ms=self.settings.offline_first_audio_ms,
            )
        return gemini_realtime_model(
            config, state.instructions, api_key=self.settings.google_api_key or None
        )


@dataclass
class CallState:
    """Per-call state (the session's userdata). The credentials live here and nowhere else."""

    call: CallContext
    config: AgentRuntimeConfig
    events: CallEvents
    credentials: CallCredentials
    tools: CallTools
    instructions: str
    stages_ms: dict[str, float] = field(default_factory=dict)
    filler: Phrase | None = None
    # The call's NATS connection, None without one: tools that ask another service use it.
    nats: Client | None = field(default=None, repr=False)
    # The call grant tool-vault released the credentials against; kept for a renewal.
    grant: str = field(default="", repr=False)
    credentials_timeout_seconds: float = 2.0
    # Set when the agent ended the call (`end_call`), with the reason it gave.
    ended_by_agent: str | None = None

    @property
    def setup_ms(self) -> float:
        return self.stages_ms.get("ready", 0.0)

    async def renew_credentials(self, agent_tool_id: str) -> ToolCredentials | None:
        """Ask tool-vault again for one tool's credentials with this call's grant (it refreshes
        an expired OAuth token); None when it cannot (revoked, refresh failed, unreachable)."""
        if self.nats is None:
            return None
        again = await release_credentials(
            self.nats, self.grant, [agent_tool_id], timeout=self.credentials_timeout_seconds
        )
        fresh = again.credentials.get(agent_tool_id)
        if fresh is not None:
            self.credentials.credentials[agent_tool_id] = fresh
        return fresh


def instructions_for(config: AgentRuntimeConfig, call: CallContext, today: datetime) -> str:
    """The system prompt plus what this call adds: date, caller, greeting already said."""
    return "\n".join(
        [
            config.system_prompt.strip(),
            "",
            "Call context:",
            f"- Today is {today:%A, %d %B %Y} (UTC).",
            f"- The caller's phone number is {call.from_number}.",
            f"- You are {config.name}. The caller has already been greeted with: "
            f'"{config.greeting_text()}" Do not greet them again.',
            "- When a tool result contains `say_to_caller`, say exactly that sentence to the "
            "caller, then go on with the conversation.",
        ]
    )


async def agent_config(
    mirror: ConfigMirror, js: JetStreamContext | None, call: CallContext
) -> AgentRuntimeConfig:
    """The agent's config from memory; from KV only if memory is older than the dispatch."""
    config = mirror.agent(call.agent_id)
    if (config is None or config.version < call.agent_version) and js is not None:
        try:
            kv = await js.key_value(AGENT_CONFIG_BUCKET)
            entry = await kv.get(call.agent_id)
            if entry.value is not None:
                mirror.apply_agent(decode(entry.value, AgentRuntimeConfig))
        except (KeyNotFoundError, NatsError, TimeoutError, msgspec.ValidationError) as exc:
            log.warning("agent config not in KV", agent_id=call.agent_id, error=type(exc).__name__)
        config = mirror.agent(call.agent_id)
    if config is None:
        raise CallRefused(f"agent {call.agent_id} is unknown")
    if not config.is_active:
        raise CallRefused(f"agent {call.agent_id} is inactive")
    return config


async def prepare_call(
    runtime: WorkerRuntime,
    metadata: DispatchMetadata,
    *,
    nc: Client | None,
    js: JetStreamContext | None,
    started: float,
    events: CallEvents | None = None,
) -> CallState:
    """Config, credentials and the whole tool list: everything but the model connection."""
    stages: dict[str, float] = {}

    def stage(name: str) -> None:
        stages[name] = (time.perf_counter() - started) * 1000
        CALL_SETUP_SECONDS.labels(name).observe(stages[name] / 1000)

    call = metadata.call
    config = await agent_config(runtime.mirror, js, call)
    stage("config")
    events = events or CallEvents(js, call)
    needs_credentials = [b.agent_tool_id for b in config.tools if b.auth_type != "none"]
    if nc is None:
        credentials = CallCredentials(unavailable=dict.fromkeys(needs_credentials, "unavailable"))
    else:
        credentials = await release_credentials(
            nc,
            metadata.grant,
            needs_credentials,
            timeout=runtime.settings.credentials_timeout_seconds,
        )
    stage("credentials")

    state: CallState

    def report(invocation: ToolInvocation) -> None:
        TOOL_CALLS.labels(invocation.outcome).inc()
        events.tool_invoked(invocation)
        if invocation.binding.function == END_CALL_FUNCTION and invocation.outcome == "ok":
            state.ended_by_agent = str(invocation.arguments.get("reason") or END_CALL_FUNCTION)

    def filler(context: RunContext[Any]) -> None:
        phrase = state.filler
        if phrase is not None:
            context.session.say(phrase.text, audio=phrase.frames(), add_to_chat_ctx=False)

    runner = ToolRunner(
        report=report, filler=filler, filler_after_seconds=runtime.settings.filler_after_seconds
    )
    bindings, worker_credentials = with_system_tools(
        config.tools, runtime.system_bindings, runtime.settings
    )
    tools = build_call_tools(
        bindings,
        runtime.tool_classes,
        {**credentials.credentials, **worker_credentials},
        credentials.unavailable,
        runner,
        runtime.http,
    )
    stage("tools")
    state = CallState(
        call=call,
        config=config,
        events=events,
        credentials=credentials,
        tools=tools,
        instructions=instructions_for(config, call, datetime.now(UTC)),
        stages_ms=stages,
        nats=nc,
        grant=metadata.grant,
        credentials_timeout_seconds=runtime.settings.credentials_timeout_seconds,
    )
    stage("ready")
    return state


async def greet(
    session: AgentSession[Any],
    config: AgentRuntimeConfig,
    greeting: asyncio.Future[Phrase],
    wait: float,
) -> None:
    """Say the greeting, exactly as written, now. Not interruptible unless the agent says so:
    then the model hears nothing until it has been said."""
    text = config.greeting_text()
    try:
        phrase: Phrase | None = await asyncio.wait_for(asyncio.shield(greeting), timeout=wait)
    except Exception as exc:  # a render failure must not cost the greeting
        log.warning(
            "greeting audio not ready; asking the model to say it", error=type(exc).__name__
        )
        phrase = None
    mute = not config.greeting_interruptible and session.input.audio is not None
    if mute:
        session.input.set_audio_enabled(False)
    if phrase is not None:
        handle = session.say(text, audio=phrase.frames())
    else:
        handle = session.generate_reply(instructions=f"Say exactly: {text}")
    if mute:
        handle.add_done_callback(lambda _: session.input.set_audio_enabled(True))


# livekit-agents' own room audio output, a private class: the call tests exercise it on upgrades.
class AgentVoiceTrack(room_io._ParticipantAudioOutput):
    """The agent's voice in the room, published as soon as the job's room connection is up.

    livekit-agents' own room output publishes its track only once the caller is in the room, so
    the caller waits for that publish and a second subscription round trip before the greeting
    can reach them. Published while LiveKit SIP is still bridging, the track is there when the
    caller joins and is subscribed as part of the join. Frames wait until the caller has
    subscribed (LiveKit signals it once the caller's side is bound and connected)."""

    def __init__(self, room: rtc.Room) -> None:
        super().__init__(
            room,
            # The format livekit-agents' own room output uses (what both realtime models speak).
            sample_rate=room_io.AudioOutputOptions.sample_rate,
            num_channels=room_io.AudioOutputOptions.num_channels,
            # With DTX (the default), as livekit-agents publishes: sending the silence before
            # and between answers doubled LiveKit's CPU per call and cost calls per core.
            track_publish_options=rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
            track_name="agent_voice",
        )
        self._publishing: asyncio.Task[None] | None = None

    def publish_once(self, connected: asyncio.Future[None]) -> None:
        """Publish the track as soon as the room is connected, in the background."""
        self._publishing = asyncio.create_task(self._publish(connected))
        self._publishing.add_done_callback(_log_publish_failure)

    async def _publish(self, connected: asyncio.Future[None]) -> None:
        await connected
        # start() publishes, then waits for the caller's subscription, which comes later.
        await self.start()

    async def close(self, _reason: str) -> None:
        """The job's shutdown callback."""
        if self._publishing is not None:
            self._publishing.cancel()
            await asyncio.gather(self._publishing, return_exceptions=True)
        await self.aclose()


def _log_publish_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the agent's audio track was not published", error=repr(task.exception()))


def new_session(model: llm.RealtimeModel, state: CallState) -> AgentSession[CallState]:
    """The call's agent session; every transcript line also goes out as a call event."""
    session: AgentSession[CallState] = AgentSession(
        llm=model, vad=None, userdata=state, turn_handling=TURN_HANDLING
    )
    follow_transcript(session, state.events)
    return session


def new_agent(state: CallState) -> Agent:
    """The agent with the call's instructions and its whole tool list, fixed for the call."""
    return Agent(instructions=state.instructions, tools=[*state.tools.tools])


def follow_transcript(session: AgentSession[Any], events: CallEvents) -> None:
    def on_item(event: voice_events.ConversationItemAddedEvent) -> None:
        item = event.item
        if isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant"):
            text = item.text_content
            if text:
                events.transcript_turn("agent" if item.role == "assistant" else "caller", text)

    session.on("conversation_item_added", on_item)


async def connect_nats(settings: Settings) -> Client | None:
    """The call's NATS connection; without one the call still runs — config from memory, tools
    that need credentials unavailable, events lost — because a caller is on the line."""
    try:
        return await asyncio.wait_for(
            bus.connect(settings.nats_url, "worker", settings.nats_password, name="voice-worker"),
            NATS_CONNECT_SECONDS,
        )
    except (NatsError, OSError, TimeoutError) as exc:
        log.error("NATS unreachable; the call goes on without it", error=type(exc).__name__)
        return None


async def entrypoint(ctx: JobContext) -> None:
    """The job of one call (runs in a job process; `prewarm` filled its runtime)."""
    started = time.perf_counter()
    runtime: WorkerRuntime = ctx.proc.userdata["runtime"]
    settings = runtime.settings
    try:
        metadata = decode(ctx.job.metadata, DispatchMetadata)
    except msgspec.ValidationError as exc:
        log.error("dispatch metadata unreadable", room=ctx.room.name, error=str(exc))
        ctx.shutdown("bad dispatch metadata")
        return
    connected = asyncio.ensure_future(ctx.connect())
    # Published while the call is prepared, so the caller's leg finds it when it joins.
    voice = AgentVoiceTrack(ctx.room)
    voice.publish_once(connected)
    ctx.add_shutdown_callback(voice.close)
    nc = await connect_nats(settings)
    CALL_SETUP_SECONDS.labels("nats").observe(time.perf_counter() - started)
    js = nc.jetstream() if nc is not None else None
    if nc is not None:
        connection = nc

        async def close_connection(_: str) -> None:
            await connection.drain()

        ctx.add_shutdown_callback(close_connection)
    events = CallEvents(js, metadata.call)
    try:
        state = await prepare_call(
            runtime,
            metadata,
            nc=nc,
            js=js,
            started=started,
            events=events,
        )
    except CallRefused as exc:
        log.warning("call refused", call_sid=metadata.call.call_sid, reason=str(exc))
        events.failed(str(exc))
        await events.flush()
        ctx.shutdown(str(exc))
        return
    config = state.config
    greeting = asyncio.ensure_future(runtime.phrases.get(config.greeting_text(), config.voice))
    filler = asyncio.ensure_future(runtime.phrases.get(settings.filler_text, config.voice))
    filler.add_done_callback(
        lambda task: setattr(state, "filler", None if task.exception() else task.result())
    )
    events.agent_joined(ctx.worker_id, state.setup_ms)
    log.info(
        "call ready",
        call_sid=state.call.call_sid,
        pid=os.getpid(),
        agent_id=config.agent_id,
        tools=state.tools.names,
        unavailable=state.credentials.unavailable,
        stages_ms=state.stages_ms,
    )

    try:
        await connected
        await run_session(ctx, runtime, state, voice, greeting)
    except Exception as exc:  # the caller must not be left in silence without an end event
        log.error("call failed", call_sid=state.call.call_sid, error=type(exc).__name__)
        events.ended(ended_by="system", reason="failed", status="failed")
        await events.flush()
        raise
    await events.flush()
    ctx.shutdown("call ended")


async def run_session(
    ctx: JobContext,
    runtime: WorkerRuntime,
    state: CallState,
    voice: AgentVoiceTrack,
    greeting: asyncio.Future[Phrase],
) -> None:
    """The conversation: start the session, greet the caller when they are there, and say how
    the call ended once it has."""
    config = state.config
    session = new_session(runtime.model(state), state)
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[voice_events.CloseEvent] = loop.create_future()
    # When the room is deleted (the agent's end_call, the gateway when the phone leg ends),
    # the session may not close: livekit-agents closes it only after this function returns,
    # and cancels this function 15 s later. So the room going away ends the call too.
    room_closed: asyncio.Future[None] = loop.create_future()
    # The caller hanging up is seen here at once, while the session may still be finishing a
    # tool call when the gateway deletes the room.
    caller_hung_up = False

    def on_close(event: voice_events.CloseEvent) -> None:
        if not closed.done():
            closed.set_result(event)

    def on_room_closed(*_: object) -> None:
        if not room_closed.done():
            room_closed.set_result(None)

    def on_participant_left(participant: rtc.RemoteParticipant) -> None:
        nonlocal caller_hung_up
        caller_hung_up = caller_hung_up or participant.kind in CALLER_KINDS

    session.on("close", on_close)
    ctx.room.on("disconnected", on_room_closed)
    ctx.room.on("participant_disconnected", on_participant_left)
    session.output.audio = voice
    await session.start(new_agent(state), room=ctx.room, room_options=ROOM_OPTIONS)
    # Greeting on the subscription alone was sooner, but it can come before the caller's
    # side is listening: under load the simulated caller missed the first frames that way.
    if not await caller_joined(ctx):
        # An ordinary early end, not a failure: nobody was on the line yet.
        log.info("room closed before the caller joined", call_sid=state.call.call_sid)
        state.events.ended(ended_by="system", reason=ROOM_CLOSED_BEFORE_CALLER)
        return
    answered = time.perf_counter()
    await greet(session, config, greeting, runtime.settings.greeting_render_seconds)
    ends: list[asyncio.Future[Any]] = [closed, room_closed]
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    ended_by, reason, status = how_it_ended(
        closed.result().reason if closed.done() else None, caller_hung_up, state.ended_by_agent
    )
    if status == "failed":
        log.error("call failed", call_sid=state.call.call_sid, reason=reason)
    state.events.ended(
        ended_by=ended_by,
        reason=reason,
        status=status,
        duration_seconds=time.perf_counter() - answered,
    )


async def caller_joined(ctx: JobContext) -> bool:
    """Wait for the caller's SIP participant: True once they are in the room, False when the
    room went away first."""
    try:
        await ctx.wait_for_participant(kind=CALLER_KINDS)
    except RuntimeError:  # livekit-agents: "room disconnected while waiting for participant"
        if ctx.room.isconnected():
            raise
        return False
    return True


def how_it_ended(
    session_close: voice_events.CloseReason | None,
    caller_hung_up: bool,
    ended_by_agent: str | None,
) -> tuple[EndedBy, str, CallStatus]:
    """Who ended the call, why, and its status: from the session's close reason (None when the
    room went away first), whether the caller's participant had left, and the reason end_call
    was given. A session that livekit-agents closed on an error (the model failed) failed."""
    if ended_by_agent is not None:
        return "agent", ended_by_agent, "completed"
    hung_up = voice_events.CloseReason.PARTICIPANT_DISCONNECTED
    if session_close is None:
        if caller_hung_up:
            return "caller", hung_up.value, "completed"
        return "system", "room_closed", "completed"
    if session_close == voice_events.CloseReason.ERROR:
        return "system", session_close.value, "failed"
    return ("caller" if session_close == hung_up else "system"), session_close.value, "completed"
