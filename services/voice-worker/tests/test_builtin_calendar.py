"""The Google Calendar tool on a call: availability in words, bookings that never double-book,
cancelling only when the agent may, and tokens that expire or are revoked mid-call.

Calls run through the worker (call preparation, tool-vault release over NATS, tool wrapping,
the offline model in text mode) against the Google Calendar stand-in."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import nats
import pytest
from nacl.public import PublicKey, SealedBox
from nats.aio.client import Client

from voiceagents.contracts.agents import AgentRuntimeConfig, ToolBinding
from voiceagents.contracts.calls import CallContext, CallEvent, DispatchMetadata, ToolInvoked
from voiceagents.contracts.codec import decode, encode
from voiceagents.contracts.mirror import ConfigMirror
from voiceagents.contracts.toolvault import (
    RELEASE_SUBJECT,
    CredentialReleaseReply,
    CredentialReleaseRequest,
    ReleasedCredentials,
    ReleaseError,
    ToolCredentials,
)
from voiceagents.devstack.servers import NatsServer
from voiceagents.worker.call import CallState, WorkerRuntime, new_agent, new_session, prepare_call
from voiceagents.worker.events import CallEvents
from voiceagents.worker.offline_model import (
    CANNOT_DO_SENTENCE,
    OfflineRealtimeModel,
    OfflineScript,
    OfflineVoice,
    ScriptBook,
    ScriptToolCall,
    ScriptTurn,
)
from voiceagents.worker.settings import Settings
from voiceagents.worker.speech import PhraseAudio
from voiceagents.worker.standins.google_calendar import GoogleCalendarStandIn
from voiceagents.worker.tools.builtin.google_calendar import (
    UNAVAILABLE_SENTENCE,
    GoogleCalendar,
    TimeNotUnderstood,
    resolve_time,
    speak_range,
)
from voiceagents.worker.tools.discovery import discover, function_specs

pytestmark = pytest.mark.unit

NEW_YORK = ZoneInfo("America/New_York")
TOOL_ID = "at-calendar"


# -- times ------------------------------------------------------------------------------------


def test_a_phrase_is_read_in_the_agents_time_zone_and_kept_in_utc() -> None:
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # 10:00 in New York
    resolved = resolve_time("tomorrow at 2pm", NEW_YORK, now)
    assert resolved.has_time
    assert resolved.moment == datetime(2026, 11, 25, 19, 0, tzinfo=UTC)


def test_iso_8601_with_and_without_an_offset() -> None:
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    assert resolve_time("2026-11-25T14:00", NEW_YORK, now).moment == datetime(
        2026, 11, 25, 19, 0, tzinfo=UTC
    )
    assert resolve_time("2026-11-25T14:00:00+01:00", NEW_YORK, now).moment == datetime(
        2026, 11, 25, 13, 0, tzinfo=UTC
    )


def test_a_day_alone_and_a_bare_hour() -> None:
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    friday = resolve_time("Friday", NEW_YORK, now)
    assert not friday.has_time
    assert friday.moment.astimezone(NEW_YORK).date().isoformat() == "2026-11-27"
    ten = resolve_time("tomorrow at 10", NEW_YORK, now)
    assert ten.has_time
    assert ten.moment.astimezone(NEW_YORK).hour == 10


def test_a_daylight_saving_change_is_respected() -> None:
    now = datetime(2027, 3, 10, 15, 0, tzinfo=UTC)  # New York moves to EDT on 14 March 2027
    assert resolve_time("2027-03-15T09:00", NEW_YORK, now).moment.hour == 13


def test_nonsense_is_not_a_time() -> None:
    with pytest.raises(TimeNotUnderstood, match="ask the caller"):
        resolve_time("whenever suits", NEW_YORK, datetime.now(UTC))


def test_free_time_is_said_the_way_people_say_it() -> None:
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    start = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)
    assert speak_range(start, start + timedelta(hours=2), NEW_YORK, now) == (
        "between 2 and 4 pm tomorrow"
    )
    assert speak_range(
        datetime(2026, 11, 27, 16, 0, tzinfo=UTC),
        datetime(2026, 11, 27, 18, 30, tzinfo=UTC),
        NEW_YORK,
        now,
    ) == ("between 11 am and 1:30 pm on Friday, 27 November")


def test_the_first_phrase_of_a_call_loads_nothing_more() -> None:
    # dateparser loads its language data on the first phrase it reads; the tool's import does
    # that already, so a call's event loop never waits for it. A fresh process shows it.
    probe = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "from zoneinfo import ZoneInfo\n"
        "from voiceagents.worker.tools.builtin.google_calendar import resolve_time\n"
        "zone = ZoneInfo('Europe/Paris')\n"
        "before = set(sys.modules)\n"
        "resolve_time('next friday at 3pm', zone, datetime.now(UTC))\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


# -- calls through the worker -----------------------------------------------------------------


@dataclass
class FakeToolVault:
    """Answers `toolvault.v1.release` as NATS user `toolvault`, sealing like tool-vault does.
    `token` is what it releases (tool-vault refreshes an expired token before releasing);
    `error` makes it refuse the calendar as tool-vault does for a revoked connection."""

    token: str
    expires_at: datetime | None = None
    error: str | None = None
    requests: list[CredentialReleaseRequest] = field(default_factory=list)

    async def handle(self, msg: Any) -> None:
        request = decode(msg.data, CredentialReleaseRequest)
        self.requests.append(request)
        if self.error is not None:
            reply = CredentialReleaseReply(
                tool_errors=[
                    ReleaseError(code=self.error, message="revoked", agent_tool_id=TOOL_ID)  # type: ignore[arg-type]
                ],
                sealed_credentials=self._seal(request, []),
            )
        else:
            credentials = [
                ToolCredentials(
                    agent_tool_id=TOOL_ID,
                    kind="oauth2",
                    access_token=self.token,
                    expires_at=self.expires_at,
                )
            ]
            reply = CredentialReleaseReply(sealed_credentials=self._seal(request, credentials))
        await msg.respond(encode(reply))

    @staticmethod
    def _seal(request: CredentialReleaseRequest, credentials: list[ToolCredentials]) -> str:
        box = SealedBox(PublicKey(base64.b64decode(request.worker_public_key)))
        sealed = box.encrypt(encode(ReleasedCredentials(credentials=credentials)))
        return base64.b64encode(sealed).decode()


@pytest.fixture
async def calendar() -> AsyncIterator[GoogleCalendarStandIn]:
    async with GoogleCalendarStandIn() as stand_in:
        yield stand_in


@pytest.fixture
async def toolvault_as_toolvault(nats_server: NatsServer) -> AsyncIterator[FakeToolVault]:
    nc = await nats.connect(**nats_server.credentials("toolvault"))
    vault = FakeToolVault(token=f"ya29.{uuid.uuid4().hex}")
    subscription = await nc.subscribe(RELEASE_SUBJECT, cb=vault.handle)
    yield vault
    await subscription.unsubscribe()
    await nc.close()


def calendar_agent(base_url: str, unselected: tuple[str, ...] = ()) -> AgentRuntimeConfig:
    functions = [f for f in function_specs(GoogleCalendar) if f.name not in unselected]
    return AgentRuntimeConfig(
        agent_id=f"agent-{uuid.uuid4().hex[:8]}",
        org_id="org-1",
        version=1,
        name="Sam",
        system_prompt="You book appointments for the salon.",
        tools=[
            ToolBinding(
                agent_tool_id=TOOL_ID,
                tool_name="google_calendar",
                auth_type="oauth2",
                config={
                    "calendar_id": "primary",
                    "timezone": "America/New_York",
                    "default_duration_minutes": 30,
                    "api_base_url": base_url,
                    # The stand-in listens on loopback, which the SSRF guard otherwise refuses.
                    "network_allowlist": ["127.0.0.1/32"],
                },
                functions=functions,
            )
        ],
    )


@dataclass
class Call:
    state: CallState
    session: Any
    model: OfflineRealtimeModel
    events: list[CallEvent]

    async def say(self, words: str) -> list[str]:
        """What the agent answers the caller's `words`."""
        result = await self.session.run(user_input=words)
        return [
            e.item.text_content
            for e in result.events
            if e.type == "message" and e.item.role == "assistant"
        ]


@pytest.fixture
async def start_call(worker_nats: Client) -> AsyncIterator[Any]:
    sessions: list[Any] = []

    async def start(config: AgentRuntimeConfig, script: OfflineScript) -> Call:
        mirror = ConfigMirror()
        mirror.apply_agent(config)
        runtime = WorkerRuntime(
            settings=Settings(dev_mode=True, model="offline"),
            mirror=mirror,
            tool_classes=discover(),
            phrases=PhraseAudio(OfflineVoice(), None),
            scripts=ScriptBook(),
        )
        sid = f"CA{uuid.uuid4().hex}"
        call = CallContext(
            call_sid=sid,
            room=f"call_{sid}",
            org_id=config.org_id,
            agent_id=config.agent_id,
            agent_version=config.version,
            from_number="+12125550123",
            to_number="+12125550100",
            started_at=datetime.now(UTC),
        )
        events: list[CallEvent] = []
        metadata = DispatchMetadata(call=call, grant="grant-" + sid)
        state = await prepare_call(
            runtime,
            metadata,
            nc=worker_nats,
            js=None,
            started=0.0,
            events=CallEvents(None, call, on_published=events.append),
        )

        model = OfflineRealtimeModel(script=script, realtime=False)
        session = new_session(model, state)
        sessions.append(session)
        await session.start(new_agent(state))
        return Call(state=state, session=session, model=model, events=events)

    yield start
    for session in sessions:
        await session.aclose()


def tomorrow_at(hour: int) -> datetime:
    day = datetime.now(NEW_YORK).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, tzinfo=NEW_YORK)


BOOKING_SCRIPT = OfflineScript(
    turns=[
        ScriptTurn(
            when="free",
            tool_calls=[
                ScriptToolCall(
                    name="check_availability", arguments={"start_time": "tomorrow at 2pm"}
                )
            ],
            after_tools="{result}",
        ),
        ScriptTurn(
            when="book",
            tool_calls=[
                ScriptToolCall(
                    name="create_event",
                    arguments={
                        "summary": "Haircut for Ana",
                        "start_time": "tomorrow at 2pm",
                        "attendee_email": "ana@example.com",
                    },
                )
            ],
            after_tools="{result}",
        ),
        ScriptTurn(
            when="check",
            tool_calls=[
                ScriptToolCall(
                    name="check_availability", arguments={"start_time": "tomorrow at 2pm"}
                )
            ],
            # What a real model does with the result: say the caller-ready answer.
            after_tools="Let me see. {answer}",
        ),
    ]
)


def answers(spoken: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in spoken]


async def test_a_booking_call_checks_then_books_and_the_same_slot_cannot_be_booked_twice(
    calendar: GoogleCalendarStandIn, toolvault_as_toolvault: FakeToolVault, start_call: Any
) -> None:
    calendar.grant(toolvault_as_toolvault.token)
    calendar.add_event("Colour for Bo", tomorrow_at(15), tomorrow_at(16))
    call = await start_call(calendar_agent(calendar.base_url), BOOKING_SCRIPT)

    [availability] = answers(await call.say("Are you free tomorrow at 2pm?"))
    assert availability["available"] is True
    assert availability["answer"] == "Yes, the calendar is free between 2 and 2:30 pm tomorrow."

    [booking] = answers(await call.say("Great, please book it."))
    assert booking["booked"] is True
    assert booking["answer"] == "Booked Haircut for Ana at 2 pm tomorrow for 30 minutes."
    held = [e for e in calendar.events() if e.summary == "Haircut for Ana"]
    assert len(held) == 1
    assert held[0].start == tomorrow_at(14).astimezone(UTC)
    assert held[0].end == tomorrow_at(14).astimezone(UTC) + timedelta(minutes=30)
    assert held[0].attendees == ["ana@example.com"]
    assert held[0].id == booking["event_id"]

    [second] = answers(await call.say("Book it again please."))
    assert second["booked"] is False
    assert second["answer"].startswith("Sorry, 2 pm tomorrow is already taken.")
    # What is still free that day is offered, in words.
    assert "between 2:30 and 3 pm tomorrow" in second["answer"]
    assert len([e for e in calendar.events() if e.summary == "Haircut for Ana"]) == 1

    [spoken] = await call.say("Could you check 2pm tomorrow once more?")
    assert spoken.startswith("Let me see. 2 pm tomorrow is taken.")
    assert "{" not in spoken

    invoked = [e for e in call.events if isinstance(e, ToolInvoked)]
    assert [(e.function, e.outcome) for e in invoked] == [
        ("check_availability", "ok"),
        ("create_event", "ok"),
        ("create_event", "ok"),
        ("check_availability", "ok"),
    ]
    # The caller's email is marked sensitive: it never reaches a call event.
    assert invoked[1].arguments["attendee_email"] == "[redacted]"


async def test_with_delete_event_unselected_the_model_cannot_cancel(
    calendar: GoogleCalendarStandIn, toolvault_as_toolvault: FakeToolVault, start_call: Any
) -> None:
    calendar.grant(toolvault_as_toolvault.token)
    booked = calendar.add_event("Haircut for Ana", tomorrow_at(11), tomorrow_at(12))
    script = OfflineScript(
        turns=[
            ScriptTurn(
                when="cancel",
                tool_calls=[ScriptToolCall(name="delete_event", arguments={"event_id": booked.id})],
            )
        ]
    )
    call = await start_call(calendar_agent(calendar.base_url, unselected=("delete_event",)), script)

    received = call.model.sessions[0].tools.function_tools
    # The calendar's functions but delete_event, and the system tool every call has.
    assert sorted(received) == ["check_availability", "create_event", "end_call", "update_event"]
    spoken = await call.say("Please cancel my appointment.")

    assert spoken == [CANNOT_DO_SENTENCE]
    assert not [e for e in call.events if isinstance(e, ToolInvoked)]
    assert ("DELETE", f"/calendar/v3/calendars/primary/events/{booked.id}") not in (
        calendar.requests
    )
    assert [e.id for e in calendar.events()] == [booked.id]


async def test_an_expired_token_is_renewed_through_tool_vault_without_the_caller_noticing(
    calendar: GoogleCalendarStandIn, toolvault_as_toolvault: FakeToolVault, start_call: Any
) -> None:
    vault = toolvault_as_toolvault
    calendar.grant(vault.token)
    call = await start_call(calendar_agent(calendar.base_url), BOOKING_SCRIPT)
    assert len(vault.requests) == 1  # released once when the call was prepared

    # The token expires mid-call; tool-vault refreshes it and releases the new one.
    calendar.expire(vault.token)
    vault.token = f"ya29.{uuid.uuid4().hex}"
    calendar.grant(vault.token)

    [availability] = answers(await call.say("Are you free tomorrow at 2pm?"))

    assert availability["available"] is True
    # CallState.renew_credentials asked again for this one tool, with the call's own grant.
    assert len(vault.requests) == 2
    assert vault.requests[1].agent_tool_ids == [TOOL_ID]
    assert vault.requests[1].grant == vault.requests[0].grant == call.state.grant
    assert call.state.credentials.credentials[TOOL_ID].access_token == vault.token
    invoked = [e for e in call.events if isinstance(e, ToolInvoked)]
    assert [(e.function, e.outcome) for e in invoked] == [("check_availability", "ok")]


async def test_a_revoked_connection_makes_the_agent_say_the_calendar_is_unavailable(
    calendar: GoogleCalendarStandIn, toolvault_as_toolvault: FakeToolVault, start_call: Any
) -> None:
    vault = toolvault_as_toolvault
    calendar.grant(vault.token)
    call = await start_call(calendar_agent(calendar.base_url), BOOKING_SCRIPT)

    # The admin revoked the app at Google: the token stops working and cannot be refreshed.
    calendar.expire(vault.token)
    vault.error = "refresh_failed"

    spoken = await call.say("Are you free tomorrow at 2pm?")

    assert spoken == [UNAVAILABLE_SENTENCE]
    assert not calendar.events()


async def test_a_token_known_to_be_expired_is_renewed_before_it_is_used(
    calendar: GoogleCalendarStandIn, toolvault_as_toolvault: FakeToolVault, start_call: Any
) -> None:
    vault = toolvault_as_toolvault
    vault.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    call = await start_call(calendar_agent(calendar.base_url), BOOKING_SCRIPT)
    vault.token, vault.expires_at = f"ya29.{uuid.uuid4().hex}", None
    calendar.grant(vault.token)

    [availability] = answers(await call.say("Are you free tomorrow at 2pm?"))

    assert availability["available"] is True
    # Only the fresh token reached Google: no request was made with the stale one.
    assert [r for r in calendar.requests if r[0] == "POST"] == [("POST", "/calendar/v3/freeBusy")]


async def test_moving_and_cancelling_an_appointment(
    calendar: GoogleCalendarStandIn, toolvault_as_toolvault: FakeToolVault, start_call: Any
) -> None:
    calendar.grant(toolvault_as_toolvault.token)
    booked = calendar.add_event("Haircut for Ana", tomorrow_at(11), tomorrow_at(12))
    calendar.add_event("Colour for Bo", tomorrow_at(13), tomorrow_at(14))
    script = OfflineScript(
        turns=[
            ScriptTurn(
                when="one",
                tool_calls=[
                    ScriptToolCall(
                        name="update_event",
                        arguments={"event_id": booked.id, "new_start_time": "tomorrow at 1pm"},
                    )
                ],
            ),
            ScriptTurn(
                when="three",
                tool_calls=[
                    ScriptToolCall(
                        name="update_event",
                        arguments={"event_id": booked.id, "new_start_time": "tomorrow at 3pm"},
                    )
                ],
            ),
            ScriptTurn(
                when="cancel",
                tool_calls=[ScriptToolCall(name="delete_event", arguments={"event_id": booked.id})],
            ),
        ]
    )
    call = await start_call(calendar_agent(calendar.base_url), script)

    [taken] = answers(await call.say("Can you move it to one?"))
    assert taken["moved"] is False
    assert taken["answer"].startswith("Sorry, 1 pm tomorrow is already taken.")

    [moved] = answers(await call.say("Then three please."))
    assert moved == {"moved": True, "answer": "Moved to 3 pm tomorrow."}
    assert calendar.events()[-1].start == tomorrow_at(15).astimezone(UTC)
    assert calendar.events()[-1].end == tomorrow_at(16).astimezone(UTC)  # length kept

    [cancelled] = answers(await call.say("Actually, cancel it."))
    assert cancelled == {"cancelled": True, "answer": "The appointment is cancelled."}
    assert [e.summary for e in calendar.events()] == ["Colour for Bo"]
