"""System tools every agent has: ending the call, and handing the caller to a person.

Both speak first and act second. The function returns an instruction for the model's next
sentence (a goodbye, a hand-off line); once that sentence has been played to the caller, the
tool acts: `end_call` deletes the call's LiveKit room (which hangs up the SIP leg and with it the
phone call), `transfer_to_human` updates the live Twilio call with `<Dial>` TwiML to the agent's
`transfer_number`, which ends the leg into LiveKit and rings the person.

The worker builds this tool for every call (it is not bound by admins): config
`twilio_api_base_url` (default `https://api.twilio.com`; tests use
`voiceagents.worker.standins.twilio_calls`) and credentials with secrets `account_sid` and
`auth_token` (or `api_key_sid` + `api_key_secret` with `account_sid`) from the worker's own
settings. The call (its SID and room) and the agent's `transfer_number` come from the call state
in the session's userdata.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from livekit import api
from livekit.agents import RunContext, get_job_context, llm
from livekit.agents.voice.events import SpeechCreatedEvent
from livekit.agents.voice.speech_handle import SpeechHandle
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client as TwilioClient
from twilio.twiml.voice_response import VoiceResponse

from voiceagents.contracts.calls import CallTransferred
from voiceagents.contracts.toolvault import ToolCredentials
from voiceagents.worker.tools.base import BaseTool, ToolMetadata, tool_function

log = structlog.get_logger("voiceagents.worker.tools.call_control")

TWILIO_API = "https://api.twilio.com"
# How long to wait for the model to start its last sentence, and for it to be played.
SENTENCE_START_SECONDS = 5.0
SENTENCE_PLAYOUT_SECONDS = 30.0

GOODBYE_INSTRUCTION = (
    "The call ends after your next sentence. Say a short, friendly goodbye to the caller now, "
    "and nothing else."
)
HANDOFF_INSTRUCTION = (
    "Tell the caller in one short sentence that you are connecting them to a person now, "
    "and nothing else."
)
CANNOT_TRANSFER = (
    "I'm sorry, I can't transfer you to a person on this line, but I'm happy to keep helping "
    "you myself."
)


def _call_state(context: RunContext[Any]) -> Any:
    try:
        return context.userdata
    except ValueError:  # a session without userdata
        return None


async def delete_room(room: str) -> None:
    """Delete the call's room through the LiveKit API of the job running the call."""
    await get_job_context().api.room.delete_room(api.DeleteRoomRequest(room=room))


class CallControl(BaseTool):
    metadata = ToolMetadata(
        name="call_control",
        description="Ends the call, or hands the caller to a person.",
        config_schema={
            "type": "object",
            "properties": {
                "twilio_api_base_url": {
                    "type": "string",
                    "description": "Twilio REST API base URL (only changed for tests).",
                    "default": TWILIO_API,
                }
            },
        },
        timeout_seconds=5.0,
        system=True,
    )

    # How the call ends; replaced in tests that run without a LiveKit job.
    close_room: Callable[[str], Awaitable[None]] = staticmethod(delete_room)

    def __init__(
        self, *, config: Mapping[str, Any], credentials: ToolCredentials | None = None
    ) -> None:
        super().__init__(config=config, credentials=credentials)
        # Background work that outlives the function call (it waits for speech to play).
        self._pending: set[asyncio.Task[None]] = set()

    @tool_function()
    async def end_call(self, context: RunContext[Any], reason: str) -> str:
        """End the call. Use it when the caller says goodbye, asks to hang up, or has nothing
        more to ask. Say nothing before calling it: its result tells you how to say goodbye.

        Args:
            reason: Why the call ends, e.g. "caller said goodbye".
        """
        state = _call_state(context)
        call = getattr(state, "call", None)
        room = getattr(call, "room", None)
        if not isinstance(room, str):
            raise RuntimeError("the call has no room to close")
        log.info("ending call after the goodbye", call_sid=getattr(call, "call_sid", None))
        self._after_next_sentence(context, lambda: self.close_room(room), "end_call")
        return GOODBYE_INSTRUCTION

    @tool_function()
    async def transfer_to_human(self, context: RunContext[Any], reason: str) -> dict[str, Any]:
        """Hand the caller to a person on the team, when they ask for one or you cannot help.

        Args:
            reason: What the caller needs, in a few words, for the person taking over.
        """
        state = _call_state(context)
        call = getattr(state, "call", None)
        number = getattr(getattr(state, "config", None), "transfer_number", None)
        if not number or call is None:
            return {"transferred": False, "say_to_caller": CANNOT_TRANSFER}

        async def transfer() -> None:
            await self._dial(call.call_sid, number)
            log.info("call transferred", call_sid=call.call_sid, to_number=number)
            events = getattr(state, "events", None)
            if events is not None:
                events.publish(
                    CallTransferred(
                        event_id=f"{call.call_sid}.worker.transferred",
                        call_sid=call.call_sid,
                        org_id=call.org_id,
                        agent_id=call.agent_id,
                        at=datetime.now(UTC),
                        to_number=number,
                        reason=reason,
                    )
                )

        self._after_next_sentence(context, transfer, "transfer_to_human")
        return {"transferred": True, "instruction": HANDOFF_INSTRUCTION}

    async def _dial(self, call_sid: str, number: str) -> None:
        """Redirect the live Twilio call to `<Dial>number</Dial>`."""
        secrets = self.credentials.secrets if self.credentials else {}
        account_sid = secrets.get("account_sid", "")
        username = secrets.get("api_key_sid") or account_sid
        password = secrets.get("api_key_secret") or secrets.get("auth_token", "")
        http = AsyncTwilioHttpClient()
        client = TwilioClient(username, password, account_sid, http_client=http)
        client.api.base_url = str(self.config.get("twilio_api_base_url") or TWILIO_API)
        twiml = VoiceResponse()
        twiml.dial(number)
        try:
            await (
                client.api.v2010.accounts(account_sid)
                .calls(call_sid)
                .update_async(twiml=str(twiml))
            )
        finally:
            await http.close()

    def _after_next_sentence(
        self, context: RunContext[Any], act: Callable[[], Awaitable[None]], name: str
    ) -> None:
        """Run `act` once the model's reply to this function's result has been played out.

        A model that replies to tool results by itself (Gemini Live) speaks that reply as a new
        speech after the one that called the tool; otherwise LiveKit asks for the reply within
        the same speech. Either way the caller hears the whole sentence before `act` runs."""
        session = context.session
        loop = asyncio.get_running_loop()
        model = session.llm
        separate_reply = (
            isinstance(model, llm.RealtimeModel) and model.capabilities.auto_tool_reply_generation
        )
        next_speech: asyncio.Future[SpeechHandle] = loop.create_future()

        def on_speech(event: SpeechCreatedEvent) -> None:
            if not next_speech.done():
                next_speech.set_result(event.speech_handle)

        if separate_reply:
            session.on("speech_created", on_speech)

        async def speak_then_act() -> None:
            try:
                async with asyncio.timeout(SENTENCE_PLAYOUT_SECONDS):
                    await _played(context.speech_handle)
                if separate_reply:
                    async with asyncio.timeout(SENTENCE_START_SECONDS):
                        sentence = await next_speech
                    async with asyncio.timeout(SENTENCE_PLAYOUT_SECONDS):
                        await _played(sentence)
            except TimeoutError:
                log.warning(
                    "the last sentence was not played in time; acting anyway", function=name
                )
            finally:
                session.off("speech_created", on_speech)
            try:
                await act()
            except Exception as exc:  # the caller already heard the sentence; log, do not raise
                log.error("call control failed", function=name, error=type(exc).__name__)

        task = asyncio.create_task(speak_then_act())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


async def _played(speech: SpeechHandle) -> None:
    """Until `speech` has been played out (or interrupted)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finished(_: SpeechHandle) -> None:
        if not done.done():
            done.set_result(None)

    speech.add_done_callback(finished)
    await done
