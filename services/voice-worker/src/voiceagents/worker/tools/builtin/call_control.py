"""System tools every agent has: ending the call, and handing the caller to a person.

Both speak first and act second. The function returns an instruction for the model's next
sentence (a goodbye, a hand-off line); once that sentence has been played to the caller, the
tool acts: `end_call` deletes the call's LiveKit room (which hangs up the SIP leg and with it the
phone call), `transfer_to_human` updates the live Twilio call with `<Dial>` TwiML to the agent's
`transfer_number`, which ends the leg into LiveKit and rings the person. When Twilio refuses the
update or does not answer within `TWILIO_SECONDS`, the agent tells the caller it could not put
them through, and the call goes on with the agent.

The worker builds this tool for every call (`tools/system.py`; an admin binds it only to
configure it, e.g. with `routing`): config
`twilio_api_base_url` (default `https://api.twilio.com`; tests use
`voiceagents.worker.standins.twilio_calls`) and credentials with secrets `account_sid` and
`auth_token` (or `api_key_sid` + `api_key_secret` with `account_sid`) from the worker's own
settings. The call (its SID and room) and the agent's `transfer_number` come from the call state
in the session's userdata.

Routing: with `routing` in the config, the model names a department and the caller goes to that
department's number — while it is open (`hours` per weekday in the routing `timezone`; a
department without `hours` is always open); an unknown department goes to the
`fallback_department`. Out of hours nobody is rung: the caller hears when the team is back and
that they will be called back, and the callback request is written through the agent's own
`leads` tool (`after_hours: "lead"`, its `create_lead`) or `crm` tool (`"ticket"`, its
`create_ticket`) on this call, run as if the model had called it — the tool must be bound to the
agent with that function enabled; without it the caller is asked to call again. Without
`routing`, every transfer goes to the agent's `transfer_number`. The clock (`now`) is replaced
in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from voiceagents.worker.tools.builtin.crm import Crm, caller_number
from voiceagents.worker.tools.builtin.leads import Leads
from voiceagents.worker.tools.toolbox import CallTools

log = structlog.get_logger("voiceagents.worker.tools.call_control")

TWILIO_API = "https://api.twilio.com"
# How long to wait for the model to start its last sentence, and for it to be played.
SENTENCE_START_SECONDS = 5.0
SENTENCE_PLAYOUT_SECONDS = 30.0
# The live-call update: the caller is waiting in silence after the hand-off sentence (twilio's
# aiohttp client has no timeout of its own but aiohttp's 300 s).
TWILIO_SECONDS = 10.0

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
TRANSFER_FAILED = (
    "I'm sorry, I couldn't put you through to a person just now, but I'm happy to keep helping "
    "you myself."
)


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")


class RoutingConfigError(ValueError):
    """The routing config is unusable; the message names the field."""


@dataclass(frozen=True)
class Department:
    name: str
    number: str
    # Opening hours by weekday (0 = Monday); None: always open. A day not listed is closed.
    hours: dict[int, tuple[time, time]] | None

    def is_open(self, now: datetime) -> bool:
        if self.hours is None:
            return True
        span = self.hours.get(now.weekday())
        return span is not None and span[0] <= now.time() < span[1]

    def next_opening(self, now: datetime) -> datetime | None:
        """The next time the department opens after `now` (local time), within a week."""
        if self.hours is None:
            return None
        for ahead in range(8):
            day: date = now.date() + timedelta(days=ahead)
            span = self.hours.get(day.weekday())
            if span is None:
                continue
            opens = datetime.combine(day, span[0], now.tzinfo)
            if opens > now:
                return opens
        return None


@dataclass(frozen=True)
class Routing:
    zone: ZoneInfo
    departments: dict[str, Department]
    fallback: str
    after_hours: Literal["lead", "ticket"]

    def department(self, name: str | None) -> Department:
        return self.departments.get((name or "").strip().lower()) or self.departments[self.fallback]


def _clock_time(text: str) -> time:
    hour, minute = (int(part) for part in text.split(":"))
    return time.max if hour == 24 else time(hour, minute)


def parse_routing(config: Mapping[str, Any]) -> Routing | None:
    """The `routing` config, checked; None when the agent has none."""
    raw = config.get("routing")
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise RoutingConfigError("routing: expected an object")
    try:
        zone = ZoneInfo(str(raw.get("timezone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        raise RoutingConfigError("routing.timezone: not an IANA time zone") from None
    departments: dict[str, Department] = {}
    for name, entry in dict(raw.get("departments") or {}).items():
        field = f"routing.departments.{name}"
        if not isinstance(entry, Mapping) or not str(entry.get("number", "")).startswith("+"):
            raise RoutingConfigError(f"{field}.number: expected a number like +14155550100")
        hours: dict[int, tuple[time, time]] | None = None
        if entry.get("hours") is not None:
            hours = {}
            for day, span in dict(entry["hours"]).items():
                match = HOURS.match(str(span))
                if day not in WEEKDAYS or match is None:
                    raise RoutingConfigError(
                        f"{field}.hours.{day}: expected a weekday (mon..sun) with HH:MM-HH:MM"
                    )
                opens, closes = (_clock_time(part) for part in str(span).split("-"))
                if opens >= closes:
                    raise RoutingConfigError(f"{field}.hours.{day}: closes before it opens")
                hours[WEEKDAYS.index(day)] = (opens, closes)
        departments[str(name).lower()] = Department(str(name).lower(), entry["number"], hours)
    fallback = str(raw.get("fallback_department", "")).lower()
    if fallback not in departments:
        raise RoutingConfigError("routing.fallback_department: must be one of the departments")
    after_hours = raw.get("after_hours", "lead")
    if after_hours not in ("lead", "ticket"):
        raise RoutingConfigError('routing.after_hours: expected "lead" or "ticket"')
    return Routing(zone=zone, departments=departments, fallback=fallback, after_hours=after_hours)


def spoken_opening(opens: datetime, now: datetime) -> str:
    """ "today at 9 am", "tomorrow at 8:30 am", "on Monday at 9 am"."""
    clock = f"{opens:%I}".lstrip("0") + (f":{opens:%M}" if opens.minute else "")
    at = f"{clock} {'am' if opens.hour < 12 else 'pm'}"
    days = (opens.date() - now.date()).days
    day = {0: "today", 1: "tomorrow"}.get(days, f"on {opens:%A}")
    return f"{day} at {at}"


def utc_now() -> datetime:
    return datetime.now(UTC)


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
                },
                "routing": {
                    "type": "object",
                    "description": "Which number each department is on, and when.",
                    "properties": {
                        "timezone": {
                            "type": "string",
                            "description": "IANA time zone of the opening hours.",
                            "default": "UTC",
                        },
                        "departments": {
                            "type": "object",
                            "description": "Department name (e.g. sales) → number and hours.",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "number": {"type": "string", "pattern": "^\\+[0-9]{6,15}$"},
                                    "hours": {
                                        "type": "object",
                                        "description": "Weekday → HH:MM-HH:MM; a day left "
                                        "out is closed; no hours: always open.",
                                        "propertyNames": {"enum": list(WEEKDAYS)},
                                        "additionalProperties": {
                                            "type": "string",
                                            "pattern": HOURS.pattern,
                                        },
                                    },
                                },
                                "required": ["number"],
                            },
                        },
                        "fallback_department": {
                            "type": "string",
                            "description": "Where callers go when the department asked for "
                            "is not in the table.",
                        },
                        "after_hours": {
                            "type": "string",
                            "enum": ["lead", "ticket"],
                            "default": "lead",
                            "description": "Out of hours, the callback request is a lead "
                            "(the agent's leads tool) or a ticket (its crm tool).",
                        },
                    },
                    "required": ["departments", "fallback_department"],
                },
            },
        },
        timeout_seconds=5.0,
        system=True,
    )

    # How the call ends; replaced in tests that run without a LiveKit job.
    close_room: Callable[[str], Awaitable[None]] = staticmethod(delete_room)
    # What time it is, for opening hours; replaced in tests.
    now: Callable[[], datetime] = staticmethod(utc_now)

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
    async def transfer_to_human(
        self,
        context: RunContext[Any],
        reason: str,
        department: str | None = None,
        caller_name: str | None = None,
    ) -> dict[str, Any]:
        """Hand the caller to a person on the team, when they ask for one or you cannot help.
        If the team is closed, the result says so and arranges a callback instead.

        Args:
            reason: What the caller needs, in a few words, for the person taking over.
            department: The team the caller needs, e.g. "sales" or "support".
            caller_name: The caller's name, if they gave it (for a callback).
        """
        state = _call_state(context)
        call = getattr(state, "call", None)
        routing = parse_routing(self.config)
        if routing is None:
            number = getattr(getattr(state, "config", None), "transfer_number", None)
            handoff = HANDOFF_INSTRUCTION
        else:
            team = routing.department(department)
            now = self.now().astimezone(routing.zone)
            if not team.is_open(now):
                return await self._after_hours(context, routing, team, now, reason, caller_name)
            number = team.number
            handoff = (
                f"Tell the caller in one short sentence that you are connecting them to the "
                f"{team.name} team now, and nothing else."
            )
        if not number or call is None:
            return {"transferred": False, "say_to_caller": CANNOT_TRANSFER}

        def record(event_id: str, outcome: Literal["ok", "failed"] = "ok", error: str = "") -> None:
            events = getattr(state, "events", None)
            if events is not None:
                events.publish(
                    CallTransferred(
                        event_id=event_id,
                        call_sid=call.call_sid,
                        org_id=call.org_id,
                        agent_id=call.agent_id,
                        at=datetime.now(UTC),
                        to_number=number,
                        reason=reason,
                        outcome=outcome,
                        error=error,
                    )
                )

        async def transfer() -> None:
            try:
                await self._dial(call.call_sid, number)
            except Exception as exc:  # the caller heard "connecting you": they must hear why not
                log.error("transfer failed", call_sid=call.call_sid, error=type(exc).__name__)
                _say(context, TRANSFER_FAILED)
                # One entry per attempt: the model may try again later in the call.
                failed_id = f"{call.call_sid}.worker.transfer_failed.{uuid.uuid4().hex[:12]}"
                record(failed_id, outcome="failed", error=type(exc).__name__)
                return
            log.info("call transferred", call_sid=call.call_sid, to_number=number)
            record(f"{call.call_sid}.worker.transferred")

        self._after_next_sentence(context, transfer, "transfer_to_human")
        return {"transferred": True, "instruction": handoff}

    async def _after_hours(
        self,
        context: RunContext[Any],
        routing: Routing,
        team: Department,
        now: datetime,
        reason: str,
        caller_name: str | None,
    ) -> dict[str, Any]:
        """Out of hours: a callback request through the agent's leads or CRM tool."""
        opens = team.next_opening(now)
        closed = f"Our {team.name} team is closed right now" + (
            f"; they're back {spoken_opening(opens, now)}." if opens else "."
        )
        requested = await self._request_callback(context, routing, team, reason, caller_name)
        if requested is None:
            return {
                "transferred": False,
                "callback_requested": False,
                "say_to_caller": f"{closed} Please call again {'then' if opens else 'later'}.",
            }
        return {
            "transferred": False,
            "callback_requested": True,
            "callback": requested,
            "say_to_caller": f"{closed} I've asked them to call you back on the number "
            "you're calling from. Is there anything else I can help with?",
        }

    async def _request_callback(
        self,
        context: RunContext[Any],
        routing: Routing,
        team: Department,
        reason: str,
        caller_name: str | None,
    ) -> dict[str, Any] | None:
        """The lead or ticket asking `team` to call back; None when the agent has no such tool
        or function enabled, or it failed (the caller is then asked to call again)."""
        tools = getattr(_call_state(context), "tools", None)
        wanted, function, key = (
            (Leads, "create_lead", "lead_id")
            if routing.after_hours == "lead"
            else (Crm, "create_ticket", "ticket_id")
        )
        tool = tools.enabled(wanted, function) if isinstance(tools, CallTools) else None
        number = caller_number(context)
        if tool is None or (function == "create_lead" and number is None):
            log.warning("no tool for the callback request", after_hours=routing.after_hours)
            return None
        note = f"Callback requested for {team.name}: {reason}"
        if function == "create_lead":
            result = await tool(
                context, name=caller_name or "Unknown caller", phone=number, notes=note
            )
        else:
            by = f" (caller: {caller_name})" if caller_name else ""
            result = await tool(context, subject=f"Callback: {team.name}", description=note + by)
        # The runner's answer: the tool's result, or a failure it has already reported.
        answer = json.loads(result)
        if key not in answer:
            return None
        return {key: answer[key]}

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
            async with asyncio.timeout(TWILIO_SECONDS):
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


def _say(context: RunContext[Any], sentence: str) -> None:
    """Have the agent say `sentence` now, as the worker's other fallbacks do (the greeting)."""
    # A closed session raises: the caller is gone, there is nobody to tell.
    with contextlib.suppress(RuntimeError):
        context.session.generate_reply(instructions=f"Say exactly: {sentence}")


async def _played(speech: SpeechHandle) -> None:
    """Until `speech` has been played out (or interrupted)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finished(_: SpeechHandle) -> None:
        if not done.done():
            done.set_result(None)

    speech.add_done_callback(finished)
    await done
